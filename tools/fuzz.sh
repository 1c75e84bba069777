#!/usr/bin/env bash
# Coverage-guided fuzzing with cargo-fuzz (libFuzzer) on the installed stable toolchain.
#   tools/fuzz.sh [SECONDS] [TARGET...]     default: 600 s each, every target
# Crashes land in fuzz/artifacts/TARGET/; copy each into tests/fuzz_regressions/TARGET/
# so that the test suite replays it (tests/fuzz_regressions.rs).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
seconds=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(RUSTC_BOOTSTRAP=1 cargo fuzz list)
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  # Seed from the shared corpus of real messages where it is beside the checkout.
  if [ -d "seeds/$t" ] && [ -z "$(ls -A "corpus/$t")" ]; then
    cp seeds/"$t"/* "corpus/$t/"
  elif [ -d ../../shared/corpus ] && [ -z "$(ls -A "corpus/$t")" ]; then
    find ../../shared/corpus -name '*.eml' -exec cp {} "corpus/$t/" \;
  fi
  cargo fuzz run -O "$t" "corpus/$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
    -max_len=262144 2>&1 | tail -n 5
done
