#!/usr/bin/env bash
# Instructions executed per generated token by the aarch64 `bitnetd run`, one compute thread,
# under qemu-aarch64 with ../shared/tools/qemu-insncount (see its README). Per token =
# (count at -n N2 - count at -n N1) / (N2 - N1), same prompt, greedy, EOS ignored, so loading,
# the prompt and start-up cancel. Counts are exact: they repeat run after run.
#
#   scripts/arm-insncount.sh [MODEL.gguf]      (N1=8 N2=40 by default)
#
# Without MODEL, a 125M gen-dummy model (seed 1, built-in 4096-token vocabulary) is written to
# target/insncount/. Not part of CI: it takes about ten minutes of qemu.
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
out=target/insncount
plugin_src=${INSNCOUNT_SRC:-../shared/tools/qemu-insncount/insncount.c}
prompt="The capital of France is"
n1=${N1:-8}
n2=${N2:-40}
mkdir -p "$out"

gcc -O2 -shared -fPIC -o "$out/libinsncount.so" "$plugin_src"
cargo build --release --bin bitnetd
cargo build --release --target "$target" --bin bitnetd
host=target/release/bitnetd
bin=target/$target/release/bitnetd

model=${1:-$out/m125.gguf}
if [ ! -f "$model" ]; then
    "$host" gen-dummy --model-size 125M --outtype i2_s --seed 1 -o "$model"
fi

# Instructions of one run generating $3 tokens with kernel $1 on CPU model $2.
count() {
    env -i qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu "$2" \
        -plugin "$out/libinsncount.so" -d plugin \
        "$bin" run -m "$model" -p "$prompt" -n "$3" -t 1 -c 256 --kernel "$1" \
        --temp 0 --seed 1 --ignore-eos 2>&1 >/dev/null | sed -n 's/^insns: //p'
}

info=$("$host" info -m "$model" 2>/dev/null)
sed -n 's/^\(shape\|tensors\|KV cache\):/&/p' <<<"$info"
# Weights read per token: every tensor once (the tied embedding by the output head).
weights=$(($(grep '^tensors:' <<<"$info" | grep -o '([0-9]* bytes)' | tr -dc '0-9\n' | paste -sd+)))
kv=$(sed -n 's/^KV cache: *\([0-9]*\) bytes per token.*/\1/p' <<<"$info")
n_prompt=$("$host" tokenize -m "$model" -p "$prompt" --json 2>/dev/null | tr -cd ',' | wc -c)
n_prompt=$((n_prompt + 1))
# The extra decode steps run at positions first..last, each reading the cache up to its own.
first=$((n_prompt + n1 - 1)) last=$((n_prompt + n2 - 2))
kv_mean=$((kv * (first + last + 2) / 2))
echo "prompt: $n_prompt tokens; decode steps at positions $first..$last"
echo "bytes read per token: $weights of weights + about $kv_mean of KV cache"

printf '%-7s %-11s %14s %8s\n' kernel cpu insns/token /scalar
declare -A scalar
for run in scalar:cortex-a72 tl1:cortex-a72 scalar:cortex-a76 i2s:cortex-a76; do
    kernel=${run%%:*} cpu=${run#*:}
    a=$(count "$kernel" "$cpu" "$n1")
    b=$(count "$kernel" "$cpu" "$n2")
    per=$(((b - a) / (n2 - n1)))
    [ "$kernel" = scalar ] && scalar[$cpu]=$per
    printf '%-7s %-11s %14d %8s\n' "$kernel" "$cpu" "$per" \
        "$(awk -v a="$per" -v b="${scalar[$cpu]}" 'BEGIN { printf "%.3f", a / b }')"
done
