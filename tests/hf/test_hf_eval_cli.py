"""trime-hf-eval on a saved tiny GPT-2 and a tokenizer trained here (no download): its perplexity
is trime.hf.evaluation's on the same documents; --save-dstore, trime-build-index, then external
memory; bad combinations are refused."""

import json

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from test_hf_loss import tiny_model  # noqa: E402
from trime.cli.hf_eval import main  # noqa: E402
from trime.hf.data import Segments, text_documents  # noqa: E402
from trime.hf.evaluation import evaluate  # noqa: E402
from trime.settings import EvalSettings  # noqa: E402

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "and", "then", "came", "back"]


def wikitext_like(path, seed=0):
    rng = np.random.default_rng(seed)
    lines = []
    for title in ("Cats", "Dogs", "Mats"):
        lines += ["", f" = {title} = ", ""]
        for _ in range(3):
            lines.append(" " + " ".join(rng.choice(WORDS, size=int(rng.integers(5, 12)))) + " ")
        lines += ["", " = = Section = = ", "", " " + " ".join(rng.choice(WORDS, size=7)) + " "]
    path.write_text("\n".join(lines) + "\n")
    return lines


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    text = root / "valid.txt"
    lines = wikitext_like(text)
    model_words = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    model_words.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    model_words.train_from_iterator(lines, tokenizers.trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=model_words, unk_token="[UNK]")
    assert len(tokenizer) <= 23  # the tiny model's vocabulary
    model = tiny_model("gpt2").float()
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root, text, lines, tokenizer


def test_perplexity_is_the_python_evaluation_on_the_same_documents(saved, capsys):
    root, text, lines, tokenizer = saved
    documents = text_documents(lines, "title")
    assert len(documents) == 3 and documents[0].lstrip().startswith("= Cats =")
    ids = [tokenizer(d, add_special_tokens=False)["input_ids"] for d in documents]
    model = transformers.AutoModelForCausalLM.from_pretrained(root / "model")
    expected = evaluate(model, Segments(ids, 6), EvalSettings(eval_memory="local,long", long_memory_size=10),
                        batch_size=2)
    main([str(root / "model"), str(text), "--eval-memory", "local,long", "--long-memory-size", "10",
          "--tokens-per-sample", "6", "--batch-size", "2", "--out", str(root / "result.json"), "--cpu"])
    result = json.loads((root / "result.json").read_text())
    assert result["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-6)
    assert result["tokens"] == expected["tokens"] == sum(map(len, ids)) - 1
    assert "perplexity" in capsys.readouterr().out


def test_datastore_then_external_memory(saved, capsys):
    from trime.cli.build_index import main as build_index

    root, text, _, _ = saved
    dstore = root / "dstore"
    main([str(root / "model"), str(text), "--save-dstore", str(dstore), "--tokens-per-sample", "6", "--cpu"])
    build_index([str(dstore), "--metric", "ip", "--index-type", "flat"])
    main([str(root / "model"), str(text), "--eval-memory", "local,ext", "--dstore", str(dstore),
          "--knn-k", "4", "--tokens-per-sample", "6", "--out", str(root / "ext.json"), "--cpu"])
    assert np.isfinite(json.loads((root / "ext.json").read_text())["perplexity"])


@pytest.mark.parametrize("argv, message", [
    (["--eval-memory", "local", "--save-dstore", "x"], "scores nothing"),
    (["--eval-scoring", "knnlm", "--eval-memory", "local"], "interpolates the LM with the external"),
    (["--tokens-per-sample", "0"], "must be >= 1"),
])
def test_bad_options_are_refused(saved, capsys, argv, message):
    root, text, _, _ = saved
    with pytest.raises(SystemExit):
        main([str(root / "model"), str(text), *argv, "--cpu"])
    assert message in capsys.readouterr().err
