#!/usr/bin/env bash
# Bounded fuzzing for CI: builds the cargo-fuzz targets of fuzz/ and runs each for
# SECONDS_PER_TARGET (default 30) seconds, starting from fuzz/corpus/<target> and
# fuzz/regressions/<target>. New coverage goes to a temporary corpus, so the repository's
# does not grow. Exits non-zero when a target crashes, hangs or outgrows its RSS limit,
# naming the input to keep in fuzz/regressions/<target>/.
#
# Runs on stable Rust: with `--sanitizer none` cargo-fuzz passes rustc only -C flags.
# Environment: FUZZ_TARGETS (space-separated; default all), FUZZ_RSS_LIMIT_MB (2048),
# FUZZ_TIMEOUT (seconds one input may take; 25), FUZZ_ARTIFACTS (fuzz/artifacts),
# FUZZ_CODEGEN_UNITS (16: half the build time of cargo-fuzz's 1 on two cores, for
# 0-30% fewer executions per second).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-30}
rss_limit=${FUZZ_RSS_LIMIT_MB:-2048}
input_timeout=${FUZZ_TIMEOUT:-25}
codegen_units=${FUZZ_CODEGEN_UNITS:-16}
artifacts=$(realpath -m "${FUZZ_ARTIFACTS:-fuzz/artifacts}")
export CARGO_TERM_COLOR=never

if ! command -v c++ >/dev/null 2>&1; then
  echo "fuzz: libFuzzer is C++ and needs a C++ compiler (apt-get install g++)" >&2
  exit 1
fi
# Installed inside the clone (target/tools), not into ~/.cargo.
export PATH="$PWD/target/tools/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  start=$SECONDS
  cargo install --locked --root target/tools cargo-fuzz --version 0.13.2 </dev/null
  echo "fuzz: installing cargo-fuzz took $((SECONDS - start)) s"
fi

start=$SECONDS
cargo fuzz build --sanitizer none --codegen-units "$codegen_units" </dev/null
echo "fuzz: building the targets took $((SECONDS - start)) s"

bin_dir=fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release
if [ -n "${FUZZ_TARGETS:-}" ]; then
  read -r -a targets <<<"$FUZZ_TARGETS"
else
  mapfile -t targets < <(cargo fuzz list </dev/null)
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/siderite-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

# One of libFuzzer's final statistics (-print_final_stats) from a log.
stat_of() { sed -n "s/^stat::$2: *//p" "$1" | tail -n 1; }

failed=()
summary=()
for t in "${targets[@]}"; do
  mkdir -p "$work/corpus/$t" "$artifacts/$t"
  # libFuzzer writes new inputs to the first directory and only reads the others.
  dirs=("$work/corpus/$t" "fuzz/corpus/$t")
  if [ -d "fuzz/regressions/$t" ]; then dirs+=("fuzz/regressions/$t"); fi
  log=$work/$t.log
  echo "fuzz: $t for $seconds s"
  rc=0
  "$bin_dir/$t" -max_total_time="$seconds" -rss_limit_mb="$rss_limit" \
    -timeout="$input_timeout" -artifact_prefix="$artifacts/$t/" -print_final_stats=1 \
    "${dirs[@]}" </dev/null >"$log" 2>&1 || rc=$?
  summary+=("$(printf '%-9s %11s execs %8s exec/s %5s new inputs %5s MB RSS  exit %s' "$t" \
    "$(stat_of "$log" number_of_executed_units)" "$(stat_of "$log" average_exec_per_sec)" \
    "$(stat_of "$log" new_units_added)" "$(stat_of "$log" peak_rss_mb)" "$rc")")
  if [ "$rc" != 0 ]; then
    failed+=("$t")
    echo "fuzz: $t FAILED (exit $rc); the end of its log:" >&2
    tail -n 40 "$log" >&2
    sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | while read -r input; do
      echo "fuzz: failing input: $input" >&2
      echo "fuzz:   reproduce: $bin_dir/$t $input" >&2
      echo "fuzz:   keep it:   cp $input fuzz/regressions/$t/  (fix the bug; cargo test replays it)" >&2
    done
  fi
done

echo "fuzz: $seconds s per target:"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} != 0 ]; then
  echo "fuzz: failed: ${failed[*]}" >&2
  exit 1
fi
