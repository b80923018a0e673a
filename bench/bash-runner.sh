#!/usr/bin/env bash
# The source document's runner pattern, as the baseline credvm's start is
# measured against: read each plaintext secret file with cat | tr, build
# the OEM strings, exec the hypervisor with them on its command line.
# Usage: bash-runner.sh SECRETS_DIR HYPERVISOR
set -euo pipefail
dir=$1 hv=$2
oem=""
for f in "$dir"/*; do
  name=$(basename "$f")
  value=$(cat "$f" | tr -d '\n')
  oem="${oem:+$oem,}io.systemd.credential:${name}=${value}"
done
exec "$hv" --kernel /boot/vmlinuz --cpus boot=2 --memory size=1024M --platform "oem_strings=[$oem]"
