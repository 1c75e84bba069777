#!/usr/bin/env bash
# Coverage-guided fuzzing with cargo-fuzz (libFuzzer) on the installed stable toolchain.
#   tools/fuzz.sh [CPU_SECONDS] [TARGET...]     default: 600 CPU seconds each, every target
# Each target runs at nice 19 until it has used CPU_SECONDS of CPU time (user + system, read
# from /proc), so that a run on a shared machine gets the CPU time asked for, not wall time.
# Crashes land in fuzz/artifacts/TARGET/; copy each into tests/fuzz_regressions/TARGET/
# so that the test suite replays it (tests/fuzz_regressions.rs).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
want=${1:-600}
shift || true
targets=("$@")
export RUSTC_BOOTSTRAP=1
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
cargo fuzz build -O
bin=target/x86_64-unknown-linux-gnu/release
tck=$(getconf CLK_TCK)
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  if [ -z "$(ls -A "corpus/$t")" ]; then
    if [ -d "seeds/$t" ]; then
      cp seeds/"$t"/* "corpus/$t/"
    elif [ -d ../../shared/corpus ]; then
      # Seed from the shared corpus of real messages where it is beside the checkout.
      find ../../shared/corpus -name '*.eml' -exec cp {} "corpus/$t/" \;
    fi
  fi
  [ -d "../tests/fuzz_regressions/$t" ] && cp ../tests/fuzz_regressions/"$t"/* "corpus/$t/"
  nice -n 19 "$bin/$t" "corpus/$t" -artifact_prefix="artifacts/$t/" -max_total_time=86400 \
    -rss_limit_mb=2048 -max_len=262144 -print_final_stats=1 > "artifacts/$t.log" 2>&1 &
  pid=$!
  cpu=0
  while kill -0 "$pid" 2>/dev/null; do
    sleep 10
    read -r ut st < <(awk '{print $14, $15}' "/proc/$pid/stat" 2>/dev/null) || break
    cpu=$(( (ut + st) / tck ))
    if [ "$cpu" -ge "$want" ]; then kill -INT "$pid"; break; fi
  done
  wait "$pid" || true
  echo "$t: ${cpu} CPU seconds; $(grep -E 'stat::number_of_executed_units' "artifacts/$t.log" | tail -n 1)"
  ls "artifacts/$t" | sed "s|^|  finding: artifacts/$t/|"
done
