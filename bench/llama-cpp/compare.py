"""llama.cpp (through llama-cpp-python) on a GGUF file: its tokenizer's ids for fixed strings, its
greedy tokens for three chat prompts, and its prefill and batch-1 decode speed.

The ids and tokens are written as JSON for the engine's tests to pin (engine/tests/data/); the
speeds are printed as llama.cpp's own counters report them. Run by bench/llama-cpp/run, not by CI.
"""

import argparse
import json
import random
import sys
import time

import llama_cpp
from llama_cpp import Llama

# English, code and several scripts; spaces, digits and special tokens where tokenizers differ.
STRINGS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world!  Two spaces,\ttabs\nand newlines\n\n.",
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    'fn main() { println!("{}", 1_000_000u64.pow(2)); } // 3.14159 42 007',
    "Ünïcödé, naïve café, façade; Straße and œuvre.",
    "日本語のテキストと中文文本，以及한국어 문장.",
    "Привет, мир! Γειά σου κόσμε. مرحبا بالعالم. שלום עולם. नमस्ते दुनिया",
    "emoji 🚀🔥👩‍💻 and symbols ∑∫√≈≠ ← → ©®™",
    "<|im_start|>user\nWhat color is the sky?<|im_end|>\n<|im_start|>assistant\n",
    "   leading spaces and trailing ones   ",
    "URLs: https://example.com/a?b=c&d=e#f and emails: someone@example.org",
]

QUESTIONS = [
    "Explain what a CPU does in one sentence.",
    "What color is the sky?",
    "Who wrote Hamlet?",
]


def chat(question):
    # SmolLM2's template for one user message (the engine's test renders it from the file and
    # checks the ids match these).
    return (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
        "<|im_end|>\n<|im_start|>user\n" + question + "<|im_end|>\n<|im_start|>assistant\n"
    )


def greedy(llm, prompt_ids, n):
    llm.reset()
    out = []
    for token in llm.generate(prompt_ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(token)
        if len(out) == n:
            break
    return out


def speed(llm, prompt, tokens, seed):
    """One prefill of `prompt` random ids, then `tokens` batch-1 decode steps; llama.cpp's own
    counters (prompt eval and eval), in tokens per second."""
    rng = random.Random(seed)
    ids = [rng.randrange(100, llm.n_vocab()) for _ in range(prompt)]
    llm.reset()
    llama_cpp.llama_perf_context_reset(llm.ctx)
    greedy(llm, ids, tokens + 1)
    perf = llama_cpp.llama_perf_context(llm.ctx)
    return (
        1000.0 * perf.n_p_eval / perf.t_p_eval_ms,
        1000.0 * perf.n_eval / perf.t_eval_ms,
        perf,
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--pin", help="write the tokenizer ids and greedy tokens here as JSON")
    p.add_argument("--speed-only", action="store_true")
    a = p.parse_args()

    llm = Llama(
        model_path=a.model,
        n_ctx=a.prompt + a.tokens + 16,
        n_batch=a.prompt,
        n_ubatch=a.prompt,
        n_threads=a.threads,
        n_threads_batch=a.threads,
        verbose=False,
    )
    if not a.speed_only:
        pins = {
            "llama_cpp_python": llama_cpp.__version__,
            "tokenize": [
                {"text": s, "ids": llm.tokenize(s.encode(), add_bos=False, special=True)}
                for s in STRINGS
            ],
            "greedy": [],
        }
        for q in QUESTIONS:
            ids = llm.tokenize(chat(q).encode(), add_bos=False, special=True)
            tokens = greedy(llm, ids, a.tokens)
            text = llm.detokenize(tokens).decode(errors="replace")
            pins["greedy"].append({"question": q, "prompt_ids": ids, "tokens": tokens})
            print(f"llama.cpp greedy, {q!r}: {text!r}", file=sys.stderr)
        if a.pin:
            with open(a.pin, "w") as f:
                json.dump(pins, f, ensure_ascii=False, indent=1)
                f.write("\n")
    t0 = time.perf_counter()
    prefill, decode, perf = speed(llm, a.prompt, a.tokens, seed=7)
    print(
        f"llama.cpp {llama_cpp.__version__}: prefill {a.prompt} tokens {prefill:.1f} tok/s, "
        f"batch-1 decode {decode:.1f} tok/s ({perf.n_eval} steps), {a.threads} threads, "
        f"{time.perf_counter() - t0:.1f} s"
    )


if __name__ == "__main__":
    main()
