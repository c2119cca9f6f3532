"""Lean vocabulary (edgekit/vocab): the trimmed tokenizer, configs and rows against the full build.

Tiny random checkpoint (edgekit.dev.synth), trimmed to N_LEAN of its 1,024 tokens on the default corpus.
Round trips run in the three tokenizers a deployment meets (transformers' tokenizers library,
llama.cpp, mlx-lm's wrapper); exactness compares the lean model's logits with the full model's at
the kept ids, in llama.cpp (F32 artifact, F32 KV cache) and MLX (bf16 weights computed in fp32).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from reference import llama_logits
from test_tokenizer import TEXTS
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.model.checkpoint import sha256_file

N_LEAN = 640
N_TOKENS = 160
MUST_KEEP_TINY = 304  # 17 named specials + 31 newline runs + 256 bytes (the 90 <unusedN> are dropped)
runner = CliRunner()


@pytest.fixture(scope="module")
def builds(tiny_ckpt, tmp_path_factory):
    from edgekit.builder.pipeline import build

    quants = ["f32", "mlx-bf16"]
    full = build(str(tiny_ckpt), target="pi5", quants=quants, out=tmp_path_factory.mktemp("full"))
    lean = build(str(tiny_ckpt), target="pi5", quants=quants, out=tmp_path_factory.mktemp("lean"), vocab=N_LEAN)
    return full, lean


@pytest.fixture(scope="module")
def manifest(builds):
    return json.loads((builds[1] / "manifest.json").read_text())


@pytest.fixture(scope="module")
def id_map(builds, manifest):
    return np.load(builds[1] / manifest["artifacts"][0]["extra"]["vocab"]["id_map"])


@pytest.fixture(scope="module")
def toks(tiny_ckpt, builds):
    from tokenizers import Tokenizer

    lean_dir = builds[1] / f"tiny-gemma4-v{N_LEAN}-mlx-bf16"
    return Tokenizer.from_file(str(tiny_ckpt / "tokenizer.json")), Tokenizer.from_file(str(lean_dir / "tokenizer.json"))


def _ids(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


# ---- what is kept, and the files that say so -----------------------------------------------------


def test_manifest_records_size_corpus_and_id_map(builds, manifest, id_map):
    from edgekit.builder.vocab import default_corpus

    lean = builds[1]
    assert [a["file"] for a in manifest["artifacts"]] == [
        f"tiny-gemma4-v{N_LEAN}-F32.gguf",
        f"tiny-gemma4-v{N_LEAN}-mlx-bf16",
    ]
    v = manifest["artifacts"][0]["extra"]["vocab"]
    assert manifest["artifacts"][1]["extra"]["vocab"] == v
    corpus = default_corpus()
    assert (v["size"], v["source_size"], v["corpus_sha256"], v["corpus_bytes"]) == (
        N_LEAN,
        1024,
        corpus.sha256,
        corpus.nbytes,
    )
    assert v["must_keep"] == MUST_KEEP_TINY and v["must_keep"] + v["from_corpus"] + v["by_fill_rule"] == N_LEAN
    assert v["id_map_sha256"] == sha256_file(lean / v["id_map"])
    assert id_map.dtype == np.int32 and id_map.shape == (N_LEAN,) and (np.diff(id_map) > 0).all()
    assert all(r["vocab"] == N_LEAN for r in manifest["recipes"].values())
    # The private lean checkpoint is gone; only the artifacts, the id map and the manifest remain.
    assert sorted(p.name for p in lean.iterdir()) == sorted(
        [*(a["file"] for a in manifest["artifacts"]), v["id_map"], "manifest.json"]
    )


def test_tokens_configs_and_merges_are_renumbered(tiny_ckpt, builds, id_map):
    full_tj = json.loads((tiny_ckpt / "tokenizer.json").read_text())
    lean_dir = builds[1] / f"tiny-gemma4-v{N_LEAN}-mlx-bf16"
    tj = json.loads((lean_dir / "tokenizer.json").read_text())
    full_by_id = {i: t for t, i in full_tj["model"]["vocab"].items()}
    lean_by_id = {i: t for t, i in tj["model"]["vocab"].items()}
    assert sorted(lean_by_id) == list(range(N_LEAN))
    # new id -> original id names the same token text
    assert all(lean_by_id[n] == full_by_id[int(o)] for n, o in enumerate(id_map))
    kept = set(lean_by_id.values())
    # every added token but the <unusedN> placeholders, same text and flags, renumbered
    want = [
        {**a, "id": int(np.searchsorted(id_map, a["id"]))}
        for a in full_tj["added_tokens"]
        if not a["content"].startswith("<unused")
    ]
    assert tj["added_tokens"] == want and len(want) == MUST_KEEP_TINY - 256
    assert all(f"<0x{b:02X}>" in kept for b in range(256))
    # merges: exactly the full list's merges whose parts and result are all kept, in rank order
    pairs = [tuple(m) for m in full_tj["model"]["merges"]]
    assert [tuple(m) for m in tj["model"]["merges"]] == [(a, b) for a, b in pairs if {a, b, a + b} <= kept]
    assert 0 < len(tj["model"]["merges"]) < len(pairs)
    # the head specials keep their ids (ascending map); config and generation ids name the same tokens
    assert [lean_by_id[i] for i in range(5)] == ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    cfg = json.loads((lean_dir / "config.json").read_text())
    assert (
        cfg["vocab_size"]
        == cfg["text_config"]["vocab_size"]
        == cfg["text_config"]["vocab_size_per_layer_input"]
        == N_LEAN
    )
    assert [lean_by_id[i] for i in cfg["eos_token_id"]] == ["<eos>", "<turn|>"]
    gen = json.loads((lean_dir / "generation_config.json").read_text())
    assert [lean_by_id[i] for i in gen["eos_token_id"]] == ["<eos>", "<turn|>"] and lean_by_id[
        gen["bos_token_id"]
    ] == "<bos>"
    assert tj["post_processor"]["special_tokens"]["<bos>"]["ids"] == [tj["model"]["vocab"]["<bos>"]]


def test_rows_are_the_kept_rows(tiny_ckpt, builds, id_map):
    import gguf

    from edgekit.model.checkpoint import load_checkpoint

    full = load_checkpoint(str(tiny_ckpt)).tensors
    t = {x.name: x for x in gguf.GGUFReader(builds[1] / f"tiny-gemma4-v{N_LEAN}-F32.gguf").tensors}
    for gname, hname in (
        ("token_embd.weight", "embed_tokens"),
        ("per_layer_token_embd.weight", "embed_tokens_per_layer"),
    ):
        got = np.asarray(t[gname].data).reshape(N_LEAN, -1)
        np.testing.assert_array_equal(got, full[f"{hname}.weight"].load()[id_map])


def test_gather_streams_runs_across_chunks(tmp_path):
    # Runs of consecutive ids crossing chunk boundaries, singletons, first and last row.
    from edgekit.builder.vocab.lean import gather_rows
    from edgekit.model.safetensors_io import TensorSpec, read_tensors, write_safetensors

    table = np.arange(1000 * 24, dtype=np.uint16).reshape(1000, 24)
    write_safetensors(tmp_path / "t.safetensors", [TensorSpec("w", (1000, 24), "BF16")], lambda s: [table])
    ref = read_tensors(tmp_path / "t.safetensors")["w"]
    ids = np.array([0, 1, 2, 3, 10, 11, 12, 13, 14, 15, 16, 17, 500, 998, 999])
    chunks = list(gather_rows(ref, ids, max_bytes=5 * 48))
    assert [len(c) for c in chunks] == [5, 5, 5]
    np.testing.assert_array_equal(np.concatenate(chunks), table[ids])


# ---- round trips and reachability ----------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_tokenizers(toks, id_map, text):
    full, lean = toks
    ids = _ids(lean, text)
    assert lean.decode(ids, skip_special_tokens=False) == text
    assert len(ids) >= len(_ids(full, text))  # fewer tokens to spell it with, never fewer tokens used


@pytest.fixture(scope="module")
def lean_llama(builds):
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(str(builds[1] / f"tiny-gemma4-v{N_LEAN}-F32.gguf"), vocab_only=True, verbose=False)
    yield llm
    llm.close()


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_llama_cpp(lean_llama, toks, text):
    ids = lean_llama.tokenize(text.encode(), add_bos=False, special=True)
    assert lean_llama.detokenize(ids, special=True).decode() == text
    assert ids == _ids(toks[1], text)  # llama.cpp's gemma4 BPE agrees with tokenizers on the lean files


def test_llama_cpp_special_ids(lean_llama, toks):
    # llama.cpp reads bos/eos from the lean GGUF's metadata: the renumbered ids of the same tokens.
    lean = toks[1]
    assert (lean_llama.token_bos(), lean_llama.token_eos()) == (lean.token_to_id("<bos>"), lean.token_to_id("<eos>"))
    assert lean_llama.n_vocab() == N_LEAN


@pytest.fixture(scope="module")
def mlx_tokenizers(builds):
    pytest.importorskip("mlx_lm")
    from mlx_lm.tokenizer_utils import load

    return (load(builds[0] / "tiny-gemma4-mlx-bf16"), load(builds[1] / f"tiny-gemma4-v{N_LEAN}-mlx-bf16"))


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_mlx_lm(mlx_tokenizers, toks, text):
    full, lean = mlx_tokenizers
    ids = lean.encode(text, add_special_tokens=False)
    assert ids == _ids(toks[1], text)
    assert lean.decode(ids) == text

    def stream(tok, ids):
        d = tok.detokenizer
        d.reset()
        for i in ids:
            d.add_token(i)
        d.finalize()
        return d.text

    # The streaming detokenizer (what mlx_lm.generate prints) gives what it gives on the full model.
    assert stream(lean, ids) == stream(full, full.encode(text, add_special_tokens=False))


def test_every_self_encoding_kept_token_stays_reachable(toks, id_map):
    full, lean = toks
    checked = 0
    for tok, new in lean.get_vocab().items():
        text = tok.replace("▁", " ")
        if _ids(full, text) == [int(id_map[new])]:
            checked += 1
            assert _ids(lean, text) == [new], tok
    # Every kept token but the 256 byte tokens (their text is "<0x41>", not the byte) encodes to itself.
    assert checked == N_LEAN - 256


# ---- exactness: lean logits are the full logits at the kept ids -----------------------------------


@pytest.fixture(scope="module")
def same_ids_text(toks, id_map):
    """Corpus words, each appended while the text's lean tokenization still maps to its full one (no
    whole corpus sentence does at 640 of 1,024 tokens: BPE runs over the whole text, so one dropped
    merge anywhere changes a sentence)."""
    from edgekit.dev.synthetic_tokenizer import corpus

    full, lean = toks
    same = lambda t: [int(id_map[i]) for i in _ids(lean, t)] == _ids(full, t)
    text = ""
    for word in " ".join(corpus()).split(" "):
        if same(text + " " + word):
            text += " " + word
        if len(_ids(full, text)) >= N_TOKENS:
            break
    full_ids, lean_ids = [2, *_ids(full, text)], [2, *_ids(lean, text)]
    # 5x the tiny preset's sliding window of 32: sliding, full and KV-shared layers all take part.
    assert [int(id_map[i]) for i in lean_ids] == full_ids and len(full_ids) > N_TOKENS, len(full_ids)
    return full_ids, lean_ids


def test_gguf_lean_logits_equal_full_at_kept_ids(builds, same_ids_text, id_map):
    full_ids, lean_ids = same_ids_text
    full = llama_logits(builds[0] / "tiny-gemma4-F32.gguf", full_ids)
    lean = llama_logits(builds[1] / f"tiny-gemma4-v{N_LEAN}-F32.gguf", lean_ids)
    assert lean.shape == (len(lean_ids), N_LEAN)
    err = float(np.abs(lean - full[:, id_map]).max())
    span = float(full.max() - full.min())
    print(
        f"GGUF F32 lean vs full at kept ids: max |Δlogit| {err:.3g} over a range of {span:.3g}, {len(lean_ids)} tokens"
    )
    # Same weights, same rows, the same F32 arithmetic per logit: measured 0 exactly.
    assert err == 0.0


def test_mlx_lean_logits_equal_full_at_kept_ids(builds, same_ids_text, id_map):
    mx = pytest.importorskip("mlx.core")
    from edgekit.backends.mlx.ple import load_mlx_model

    full_ids, lean_ids = same_ids_text

    def logits(path, ids):
        model, _ = load_mlx_model(path, dtype=mx.float32)
        return np.array(model(mx.array([ids]))[0].astype(mx.float32))

    full = logits(builds[0] / "tiny-gemma4-mlx-bf16", full_ids)
    lean = logits(builds[1] / f"tiny-gemma4-v{N_LEAN}-mlx-bf16", lean_ids)
    err = float(np.abs(lean - full[:, id_map]).max())
    span = float(full.max() - full.min())
    print(f"MLX fp32 lean vs full at kept ids: max |Δlogit| {err:.3g} over a range of {span:.3g}")
    assert err == 0.0


# ---- bad input: one line, non-zero exit, nothing written -----------------------------------------


def _fails(tmp_path, tiny_ckpt, *args):
    out = tmp_path / "out"
    res = runner.invoke(app, ["build", "-m", str(tiny_ckpt), "-q", "f32", "--out", str(out), *args])
    assert res.exit_code == 1, res.output
    assert not out.exists()  # every check runs before the output folder is made
    return res.stderr


def test_vocab_below_must_keep(tmp_path, tiny_ckpt):
    # The stated minimum also holds one BPE merge (2 tokens here), which llama.cpp's tokenizer needs:
    # "use at least 304" used to fail on the lean tokenizer (tests/faults/test_build_inputs.py builds 306).
    assert _fails(tmp_path, tiny_ckpt, "--vocab", str(MUST_KEEP_TINY - 1)) == (
        f"edgekit: error: vocab {MUST_KEEP_TINY - 1} is smaller than the {MUST_KEEP_TINY + 2} tokens every Gemma 4 "
        "deployment keeps (special, control, template and multimodal tokens, 256 byte-fallback tokens, and 2 for "
        f"one BPE merge, which llama.cpp's tokenizer needs); use at least {MUST_KEEP_TINY + 2}\n"
    )


def test_vocab_above_vocabulary(tmp_path, tiny_ckpt):
    assert _fails(tmp_path, tiny_ckpt, "--vocab", "1025") == (
        "edgekit: error: --vocab 1025: the model's vocabulary has 1024 tokens, so there is nothing to trim; build "
        "without --vocab, or with --vocab below 1024\n"
    )


def test_corpus_empty(tmp_path, tiny_ckpt):
    (tmp_path / "empty.txt").write_text(" \n\n")
    c = tmp_path / "empty.txt"
    assert _fails(tmp_path, tiny_ckpt, "--vocab", "512", "--vocab-corpus", str(c)) == (
        f"edgekit: error: {c}: the vocabulary corpus is empty; pass a UTF-8 text file with the kind of text "
        "the deployment will see\n"
    )


def test_corpus_not_utf8(tmp_path, tiny_ckpt):
    c = tmp_path / "latin1.txt"
    c.write_bytes("café olé".encode("latin-1"))
    assert _fails(tmp_path, tiny_ckpt, "--vocab", "512", "--vocab-corpus", str(c)) == (
        f"edgekit: error: {c}: the vocabulary corpus: not UTF-8 text (byte 0xe9 at offset 3); convert it to "
        "UTF-8 (e.g. iconv -t UTF-8) or pass another file\n"
    )


def test_corpus_missing_and_corpus_without_size(tmp_path, tiny_ckpt):
    c = tmp_path / "nope.txt"
    assert _fails(tmp_path, tiny_ckpt, "--vocab", "512", "--vocab-corpus", str(c)) == (
        f"edgekit: error: {c}: cannot read the vocabulary corpus (No such file or directory); pass a "
        "readable UTF-8 text file\n"
    )
    (tmp_path / "c.txt").write_text("hello")
    assert _fails(tmp_path, tiny_ckpt, "--vocab-corpus", str(tmp_path / "c.txt")) == (
        "edgekit: error: --vocab-corpus needs a vocabulary size to trim to; add --vocab N or pick a recipe "
        "with vocab = N\n"
    )


def test_recipe_vocab_is_validated(tmp_path):
    from edgekit.core.errors import ConfigError
    from edgekit.profiles.recipes import load_recipe

    p = tmp_path / "lean.toml"
    p.write_text('format = "gguf"\nquant = "F32"\nftype = "ALL_F32"\nvocab = 65536\n')
    assert load_recipe(p).vocab == 65536 and load_recipe(p).to_json()["vocab"] == 65536
    p.write_text('format = "gguf"\nquant = "F32"\nftype = "ALL_F32"\nvocab = "65k"\n')
    with pytest.raises(ConfigError, match=r"vocab = '65k'; give a positive number of tokens"):
        load_recipe(p)


def test_user_corpus_picks_its_tokens(tmp_path, tiny_ckpt):
    # A corpus of one sentence: its tokens are kept before any other corpus-free token.
    from tokenizers import Tokenizer

    from edgekit.builder.vocab import SourceTokenizer, corpus_from_bytes, select

    text = "SELECT name, count(*) FROM tokens WHERE id < 1024 GROUP BY name ORDER BY 2 DESC;"
    src = SourceTokenizer.read(tiny_ckpt)
    sel = select(src, MUST_KEEP_TINY + 100, corpus_from_bytes("q.sql", text.encode()))
    used = set(_ids(Tokenizer.from_file(str(tiny_ckpt / "tokenizer.json")), text))
    assert used <= set(sel.kept.tolist())
    assert sel.size == MUST_KEEP_TINY + 100 == sel.n_must + sel.n_corpus + sel.n_fill
    # 35 distinct tokens, 73 with their closures; the fill rule did the rest
    assert (sel.n_corpus, sel.n_fill) == (73, 27)


def test_recipe_vocab_mixed_with_full_recipes(tiny_ckpt, tmp_path, monkeypatch):
    # One build, a full and a lean recipe: each gets its own checkpoint and intermediate (the lean
    # Q4_0 is quantized by llama.cpp from the lean intermediate, not the full one).
    import dataclasses

    import llama_cpp

    from edgekit.builder.pipeline import build
    from edgekit.profiles.recipes import RECIPES

    lean = dataclasses.replace(RECIPES.get("q4_0"), name="q4_0-lean", vocab=N_LEAN)
    monkeypatch.setitem(RECIPES._items, "q4_0-lean", lean)
    folder = build(str(tiny_ckpt), target="pi5", quants=["q4_0", "q4_0-lean"], out=tmp_path)
    m = json.loads((folder / "manifest.json").read_text())
    assert [a["file"] for a in m["artifacts"]] == ["tiny-gemma4-Q4_0.gguf", f"tiny-gemma4-v{N_LEAN}-Q4_0.gguf"]
    assert "vocab" not in m["artifacts"][0]["extra"] and m["artifacts"][1]["extra"]["vocab"]["size"] == N_LEAN
    assert m["recipes"]["q4_0-lean"]["vocab"] == N_LEAN and "vocab" not in m["recipes"]["q4_0"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*(a["file"] for a in m["artifacts"]), "manifest.json", f"tiny-gemma4-v{N_LEAN}.vocab-ids.npy"]
    )
    for a, n in zip(m["artifacts"], (1024, N_LEAN), strict=True):
        llm = llama_cpp.Llama(str(folder / a["file"]), vocab_only=True, verbose=False)
        assert llm.n_vocab() == n
        llm.close()


def test_e2b_shaped_tokenizer_keeps_every_kept_token_reachable(tmp_path):
    # The shape-true preset's tokenizer (262,144 pieces, 514,906 merges; no weights): the fill rule's
    # private-use triples have two merges each, so the closure must follow the derivation BPE takes.
    # Measured: 311 must-keep, 1,437 from the default corpus, 63,788 by the fill rule, 121,870 merges;
    # ≈20 s and ≈1 GB here (two 262k-token tokenizers loaded).
    from tokenizers import Tokenizer

    from edgekit.builder.vocab import SourceTokenizer, default_corpus, select
    from edgekit.builder.vocab.lean import lean_tokenizer_json
    from edgekit.dev.synthetic_tokenizer import GEMMA4_MERGES, write_synthetic_tokenizer

    write_synthetic_tokenizer(tmp_path, 262144, n_merges=GEMMA4_MERGES)
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": [1, 106], "bos_token_id": 2, "pad_token_id": 0}))
    src = SourceTokenizer.read(tmp_path)
    sel = select(src, 65536, default_corpus())
    assert (sel.size, sel.n_must, sel.n_corpus, sel.n_fill, sel.merges) == (65536, 311, 696, 64529, 121870)
    lean = Tokenizer.from_str(json.dumps(lean_tokenizer_json(src, sel)))
    full = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    texts = [src.tokens[int(o)].replace("▁", " ") for o in sel.kept]
    pairs = zip(
        full.encode_batch(texts, add_special_tokens=False),
        lean.encode_batch(texts, add_special_tokens=False),
        strict=True,
    )
    checked = [(k, lean_enc.ids) for k, (full_enc, lean_enc) in enumerate(pairs) if full_enc.ids == [int(sel.kept[k])]]
    assert len(checked) == 65536 - 256 and all(ids == [k] for k, ids in checked)


def test_vocab_not_positive(tmp_path, tiny_ckpt):
    assert _fails(tmp_path, tiny_ckpt, "--vocab", "0") == (
        "edgekit: error: --vocab 0: give a positive number of tokens, e.g. --vocab 65536\n"
    )


def test_trim_checkpoint_is_a_checkpoint_transform(tiny_ckpt, tmp_path):
    # The library call: Checkpoint + N + corpus -> a lean Checkpoint the converters read.
    from edgekit.builder.vocab import default_corpus, trim_checkpoint
    from edgekit.model.checkpoint import load_checkpoint

    full = load_checkpoint(str(tiny_ckpt))
    lean, sel = trim_checkpoint(full, 512, default_corpus(), tmp_path)
    assert lean.name == "tiny-gemma4-v512" and lean.config.vocab_size == lean.config.vocab_size_per_layer_input == 512
    assert lean.tensors["embed_tokens.weight"].shape == (512, 256)
    assert lean.tensors["embed_tokens_per_layer.weight"].shape == (512, full.config.ple_dim)
    # every other tensor is the source's, read in place
    assert all(lean.tensors[k] is v for k, v in full.tensors.items() if not k.startswith("embed_tokens"))
    np.testing.assert_array_equal(
        lean.tensors["embed_tokens.weight"].load(), full.tensors["embed_tokens.weight"].load()[sel.kept]
    )


def test_recipe_vocab_is_a_cap(tiny_ckpt, tmp_path, caplog):
    # iq4_xs-edge-lean keeps 65,536 tokens; the tiny model has 1,024: nothing to trim, so the recipe is
    # left out with one warning and a manifest entry, never built as a "lean" copy of the full model.
    caplog.set_level("WARNING", logger="edgekit")
    res = runner.invoke(app, ["build", "-m", str(tiny_ckpt), "-q", "iq4_xs-edge-lean,q8_0", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    folder = tmp_path / "tiny-gemma4" / "pi5"
    m = json.loads((folder / "manifest.json").read_text())
    assert [a["recipe"] for a in m["artifacts"]] == ["q8_0"] and list(m["recipes"]) == ["q8_0"]
    assert m["skipped"] == {
        "iq4_xs-edge-lean": "vocab = 65536 caps the vocabulary, and the model's has 1024 tokens: nothing to trim"
    }
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "tiny-gemma4-Q8_0.gguf"]
    assert len([r for r in caplog.records if "skipped" in r.getMessage()]) == 1


def test_only_no_op_lean_recipes_is_one_line(tmp_path, tiny_ckpt):
    res = runner.invoke(app, ["build", "-m", str(tiny_ckpt), "-q", "iq4_xs-edge-lean", "--out", str(tmp_path / "out")])
    assert res.exit_code == 1 and not (tmp_path / "out").exists()
    assert res.stderr == (
        "edgekit: error: iq4_xs-edge-lean: the model's vocabulary of 1024 tokens is already within "
        "the recipe's vocab, so there is nothing to trim; build the full-vocabulary recipe instead "
        "(e.g. --quant iq4_xs-edge)\n"
    )


def test_command_line_vocab_at_or_above_the_vocabulary_is_refused(tmp_path, tiny_ckpt):
    # --vocab N applies to every recipe, lean ones included: at or above the vocabulary it trims nothing,
    # so it is refused (a full copy under a lean name would claim a trim that did not happen)
    assert _fails(tmp_path, tiny_ckpt, "--vocab", "2048", "-q", "iq4_xs-edge-lean").endswith(
        "--vocab 2048: the model's vocabulary has 1024 tokens, so there is nothing to trim; build without --vocab, "
        "or with --vocab below 1024\n"
    )
