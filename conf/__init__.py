"""The Hydra config tree, installed as the package `nmt.conf`.

Hydra imports this package before it reads a yaml file of it, so the resolvers the yaml
files use are registered here, whichever way the config is composed (`nmt-train`,
`nmt.config.compose`, Hydra's compose API).
"""

from nmt.results import register_resolvers

register_resolvers()
