#!/usr/bin/env bash
# Fetch Multi30k task 1 (Elliott et al. 2016) from the public release of the
# multi30k/dataset repository: train / val / test_2016_flickr in en, de, fr, gzipped.
#
#   scripts/download_multi30k.sh [DIR]      # default: $NMT_DATA_DIR/multi30k, else data/multi30k
#   export NMT_DATA_DIR=$(dirname DIR)       # then: nmt-train data=multi30k
#
# Files already present are kept; line counts are checked (29000 / 1014 / 1000).
set -euo pipefail

BASE_URL="${MULTI30K_URL:-https://github.com/multi30k/dataset/raw/master/data/task1/raw}"
DEST="${1:-${NMT_DATA_DIR:-data}/multi30k}"
mkdir -p "$DEST"

fetch() {  # fetch URL FILE: download to a temporary name, rename when complete
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL --retry 3 -o "$2.part" "$1"
    elif command -v wget >/dev/null 2>&1; then
        wget -q -O "$2.part" "$1"
    else
        echo "error: need curl or wget" >&2
        exit 1
    fi
    mv "$2.part" "$2"
}

declare -A LINES=([train]=29000 [val]=1014 [test_2016_flickr]=1000)
for split in train val test_2016_flickr; do
    for lang in en de fr; do
        file="$DEST/$split.$lang.gz"
        if [[ ! -s "$file" ]]; then
            echo "downloading $split.$lang.gz"
            fetch "$BASE_URL/$split.$lang.gz" "$file"
        fi
        n=$(gzip -dc "$file" | wc -l)
        if [[ "$n" -ne "${LINES[$split]}" ]]; then
            echo "error: $file has $n lines, expected ${LINES[$split]}; delete it and retry" >&2
            exit 1
        fi
    done
done
echo "Multi30k is in $DEST; set NMT_DATA_DIR=$(cd "$DEST/.." && pwd) to use data=multi30k"
