"""Synthetic GGUF models that a real Ollama loads and runs, each giving one fixed answer.

A real server needs real model files, and none can be downloaded in a test run; these are made on
the spot (milliseconds for the small ones) with the ``gguf`` writer. They are Llama-architecture
models whose blocks all compute, but whose attention and feed-forward outputs are zero, so the
residual stream carries only the last token's embedding; the output matrix is then a next-token
table. Every answer token gets a residual direction of its own (position encoding), so an answer
may repeat a word (two tool calls naming the same argument) and still be said once, in order.

Whatever the prompt, a model answers its ``answer`` and ends with ``<|eot_id|>`` (``done_reason``
``stop``); a ``loop`` model repeats it until ``num_predict`` or the context ends it. The bundled
chat template renders tools the way Ollama's own tool parser reads them back, so a model whose
answer is a JSON function call produces real ``tool_calls``.

    python -m ollama_asgi.testing.gguf_models OUT_DIR [NAME...]        # the fixtures, with Modelfiles
    python -m ollama_asgi.testing.gguf_models OUT_DIR --custom big --hidden 4096 --layers 32 ...
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FIXTURES", "ModelSpec", "modelfile", "write_gguf", "write_model"]

SPECIALS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|python_tag|>",
)
_NORMAL, _CONTROL = 1, 3
_LOGIT = 20.0  # the intended next token's logit; every other token's is 0


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One synthetic model: what it answers and the shape of its tensors (the shape sets its size)."""

    name: str
    answer: str
    loop: bool = False
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    ff: int = 128
    context_length: int = 32768
    seed: int = 0
    num_thread: int | None = 1
    """The runner's threads (a Modelfile parameter); one keeps small CPU models fast on a busy machine.

    Two runner threads on two shared cores wait on each other for up to seconds per answer; one
    answers ``tiny`` in milliseconds. None leaves it to Ollama (large models, GPUs)."""

    @property
    def parameters(self) -> int:
        """Roughly how many weights the model has (F16: two bytes each)."""
        head_dim = self.hidden // self.heads
        per_block = self.hidden * head_dim * (2 * self.heads + 2 * self.kv_heads) + 3 * self.hidden * self.ff
        return self.layers * per_block + 2 * 400 * self.hidden


_TOOL_CALL = '{"name": "get_weather", "parameters": {"city": "%s"}}'

FIXTURES: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("tiny", "The quick brown fox jumps over the lazy dog."),
        ModelSpec("loop", "one two three four five six seven eight nine ten.", loop=True, hidden=96, layers=4),
        ModelSpec("tools", _TOOL_CALL % "Paris", hidden=80),
        # Two calls in one answer: the same words twice, which only a position-encoding table can say.
        ModelSpec("tools2", _TOOL_CALL % "Paris" + _TOOL_CALL % "London", hidden=96),
        ModelSpec(
            "medium",
            "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
            hidden=1024,
            layers=9,
            heads=16,
            kv_heads=4,
            ff=2816,
            seed=1,
        ),
    )
}


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, which byte-level BPE vocabularies use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTES = _byte_alphabet()


def _encode(text: str) -> str:
    return "".join(_BYTES[b] for b in text.encode("utf-8"))


class _Vocabulary:
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.types: list[int] = []
        self.merges: list[str] = []
        self.ids: dict[str, int] = {}

    def add(self, token: str, kind: int = _NORMAL) -> int:
        found = self.ids.get(token)
        if found is None:
            found = self.ids[token] = len(self.tokens)
            self.tokens.append(token)
            self.types.append(kind)
        return found

    def add_reachable(self, piece: str) -> int:
        """Add ``piece`` with the merges that build it from its bytes, so prompts tokenize to it too."""
        for end in range(2, len(piece) + 1):
            if piece[:end] not in self.ids:
                self.merges.append(f"{piece[: end - 1]} {piece[end - 1]}")
                self.add(piece[:end])
        return self.add(piece)


def _segment(piece: str, used: set[str]) -> list[str]:
    """Split ``piece`` into tokens none of which the answer has used yet (each answer token is one position)."""
    if piece not in used:
        return [piece]
    for cut in range(len(piece) - 1, 0, -1):
        head = piece[:cut]
        if head in used:
            continue
        try:
            return [head, *_segment(piece[cut:], used | {head})]
        except ValueError:
            continue
    raise ValueError(f"cannot say {piece!r} again with fresh tokens")


def _answer_pieces(answer: str) -> list[str]:
    pieces: list[str] = []
    used: set[str] = set()
    for i, word in enumerate(answer.split(" ")):
        for token in _segment(_encode(word if i == 0 else " " + word), used):
            pieces.append(token)
            used.add(token)
    return pieces


def write_gguf(spec: ModelSpec, path: Path) -> Path:
    """Write ``spec`` as a GGUF file (F16 weights, byte-level BPE vocabulary, Llama-3 special tokens)."""
    import gguf  # the test extra: only the suite and the benchmarks make models
    import numpy as np

    rng = np.random.default_rng(spec.seed)
    vocab = _Vocabulary()
    for b in range(256):
        vocab.add(_BYTES[b])
    for word in ("Why", "is", "the", "sky", "blue", "Hello", "hello", "world", "weather", "Paris", "What"):
        vocab.add_reachable(_encode(" " + word))
    answer = [vocab.add_reachable(piece) for piece in _answer_pieces(spec.answer)]
    special = {name: vocab.add(name, _CONTROL) for name in SPECIALS}
    wrap = None
    if spec.loop:  # after the last piece the answer starts again, after a space
        wrap = vocab.add_reachable(_encode(" " + spec.answer.split(" ")[0]))
        if wrap in answer:
            raise ValueError("a loop answer's first word must not reappear after a space")
    if len(answer) + 1 > spec.hidden:
        raise ValueError(f"hidden={spec.hidden} is too small for an answer of {len(answer)} tokens")

    size, hidden = len(vocab.tokens), spec.hidden
    # Direction 0: "no answer token yet" (every other token); direction k: the k-th answer token.
    embedding = np.zeros((size, hidden), np.float32)
    embedding[:, 0] = 1.0
    for k, token in enumerate(answer):
        embedding[token] = 0.0
        embedding[token, k + 1] = 1.0
    if wrap is not None:
        embedding[wrap] = embedding[answer[0]]
    # Token-specific noise in the directions the output ignores: embeddings then depend on the input.
    free = hidden - (len(answer) + 1)
    if free > 0:
        embedding[:, len(answer) + 1 :] = rng.normal(0.0, 0.5 / np.sqrt(free), (size, free))
    # RMSNorm turns a unit direction into sqrt(hidden) times it, hence the scale.
    output = np.zeros((size, hidden), np.float32)
    scale = _LOGIT / np.sqrt(hidden)
    following = [*answer[1:], wrap if wrap is not None else special["<|eot_id|>"]]
    output[answer[0], 0] = scale
    for k, token in enumerate(following):
        output[token, k + 1] = scale

    head_dim = hidden // spec.heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(spec.name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(spec.context_length)
    writer.add_embedding_length(hidden)
    writer.add_block_count(spec.layers)
    writer.add_feed_forward_length(spec.ff)
    writer.add_head_count(spec.heads)
    writer.add_head_count_kv(spec.kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(500000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    writer.add_bos_token_id(special["<|begin_of_text|>"])
    writer.add_eos_token_id(special["<|eot_id|>"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    def f16(values: Any) -> Any:
        return values.astype(np.float16)

    def random(rows: int, cols: int) -> Any:
        return f16(rng.normal(0.0, 0.02, (rows, cols)))

    writer.add_tensor("token_embd.weight", f16(embedding))
    for i in range(spec.layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", random(spec.heads * head_dim, hidden))
        writer.add_tensor(f"blk.{i}.attn_k.weight", random(spec.kv_heads * head_dim, hidden))
        writer.add_tensor(f"blk.{i}.attn_v.weight", random(spec.kv_heads * head_dim, hidden))
        writer.add_tensor(f"blk.{i}.attn_output.weight", np.zeros((hidden, spec.heads * head_dim), np.float16))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", random(spec.ff, hidden))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", random(spec.ff, hidden))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", np.zeros((hidden, spec.ff), np.float16))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.add_tensor("output.weight", f16(output))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# Llama-3 style turns; tools are offered in the last user turn and an assistant's calls are written
# back as one JSON object each, which is the shape Ollama's tool parser looks for in the answer.
CHAT_TEMPLATE = """\
{{- if or .System .Tools }}<|start_header_id|>system<|end_header_id|>
{{- if .System }}

{{ .System }}
{{- end }}
{{- if .Tools }}

Answer with a function call when a function fits the question.
{{- end }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>

{{ if and $.Tools $last }}Functions:
{{ range $.Tools }}{{ . }}
{{ end }}Reply as {"name": function name, "parameters": arguments}.
{{ end }}{{ .Content }}<|eot_id|>
{{- if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>

{{- if .ToolCalls }}
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}{{ end }}
{{- else }}

{{ .Content }}
{{- end }}{{ if not $last }}<|eot_id|>{{ end }}
{{- else if eq .Role "tool" }}<|start_header_id|>ipython<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}
{{- end }}"""


def modelfile(spec: ModelSpec, gguf_path: Path) -> str:
    """The Modelfile that ``ollama create`` turns into a chat model with tool support."""
    lines = [f"FROM {gguf_path}", f'TEMPLATE """{CHAT_TEMPLATE}"""']
    lines += [f'PARAMETER stop "{stop}"' for stop in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")]
    if spec.num_thread is not None:
        lines.append(f"PARAMETER num_thread {spec.num_thread}")
    return "\n".join(lines) + "\n"


def write_model(spec: ModelSpec, directory: Path) -> Path:
    """Write ``NAME.gguf`` and ``Modelfile.NAME`` into ``directory`` (reused when already there); returns the Modelfile."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / f"{spec.name}.gguf"
    stamp = directory / f"{spec.name}.spec"
    described = repr(dataclasses.astuple(spec))
    if not weights.exists() or not stamp.exists() or stamp.read_text() != described:
        partial = weights.with_suffix(".partial")
        write_gguf(spec, partial)
        partial.replace(weights)
        stamp.write_text(described)
    path = directory / f"Modelfile.{spec.name}"
    path.write_text(modelfile(spec, weights.resolve()))
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ollama_asgi.testing.gguf_models", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("out", type=Path, help="directory for NAME.gguf and Modelfile.NAME")
    parser.add_argument("names", nargs="*", help=f"fixtures to write (default: all but medium): {', '.join(FIXTURES)}")
    parser.add_argument("--custom", metavar="NAME", help="write one model of the shape given below instead")
    parser.add_argument("--answer", default="The quick brown fox jumps over the lazy dog.")
    parser.add_argument("--loop", action="store_true")
    for flag, default in (("hidden", 64), ("layers", 2), ("heads", 4), ("kv-heads", 2), ("ff", 128), ("seed", 0)):
        parser.add_argument(f"--{flag}", type=int, default=default)
    parser.add_argument("--context-length", type=int, default=32768)
    parser.add_argument("--num-thread", type=int, default=None, help="a num_thread parameter for the Modelfile")
    args = parser.parse_args(argv)
    specs: Iterable[ModelSpec]
    if args.custom:
        specs = [
            ModelSpec(
                args.custom,
                args.answer,
                loop=args.loop,
                hidden=args.hidden,
                layers=args.layers,
                heads=args.heads,
                kv_heads=args.kv_heads,
                ff=args.ff,
                context_length=args.context_length,
                seed=args.seed,
                num_thread=args.num_thread,
            )
        ]
    else:
        specs = [FIXTURES[name] for name in (args.names or [n for n in FIXTURES if n != "medium"])]
    for spec in specs:
        path = write_model(spec, args.out)
        size = (args.out / f"{spec.name}.gguf").stat().st_size
        print(f"{path}  ({size / 1e6:.1f} MB, ~{spec.parameters / 1e6:.1f}M parameters)")


if __name__ == "__main__":
    main()
