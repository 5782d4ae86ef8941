"""Reader commands end to end on a tiny KILT world: read memory -> read train -> read predict -> eval kilt, the
reader inside eval kilt, and bad input (missing passages, labels the head cannot give, --k too large)."""

from __future__ import annotations

import json
import shutil

import pytest

from retromem.cli import main
from retromem.eval.kilt import read_kilt_predictions
from tests.read_fixtures import write_kilt_world

pytestmark = pytest.mark.usefixtures("restore_logging")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_kilt_world(tmp_path_factory.mktemp("kilt-world"))


@pytest.fixture(scope="module")
def trained(world, tiny_model_dir, tmp_path_factory):
    """A memory (layer 1 of 2, fp16) of the claims' passages with gold forced in, and a reader trained on it."""
    root = tmp_path_factory.mktemp("reader")
    memory = root / "memory"
    common = ["--task", str(world["claims"]), "--run", str(world["claims_run"]), "--passages", "3"]
    assert main(["read", "memory", *common, "--model", str(tiny_model_dir), "--k", "1", "--force-gold",
                 "--output", str(memory)]) == 0
    assert main(["read", "train", *common, "--memory", str(memory), "--model", str(tiny_model_dir), "--k", "1",
                 "--output", str(root / "run"), "--max-steps", "3", "--batch-size", "4", "--precision", "fp32",
                 "--logging-steps", "1"]) == 0
    return {"memory": memory, "reader": root / "run" / "final", "common": common, "root": root}


def test_predictions_are_written_and_scored_by_eval_kilt(world, trained, tmp_path, capsys):
    out = tmp_path / "pred.jsonl"
    assert main(["read", "predict", *trained["common"], "--memory", str(trained["memory"]), "--reader",
                 str(trained["reader"]), "--output", str(out)]) == 0
    assert "questions/s" in capsys.readouterr().out
    predictions = read_kilt_predictions(out)
    assert len(predictions) == 16 and {p.answer for p in predictions} <= {"SUPPORTS", "REFUTES"}
    assert all(len(p.provenance) == 3 for p in predictions)  # the pages of the run's ranking
    assert main(["eval", "kilt", "--task", str(world["claims"]), "--predictions", str(out), "--output",
                 str(tmp_path / "scores")]) == 0
    results = json.loads((tmp_path / "scores" / "results.json").read_text())
    assert results["metrics"]["R-Prec"] > 0.3 and 0 <= results["metrics"]["accuracy"] <= 1


def test_eval_kilt_with_a_reader_retrieves_reads_and_scores(world, trained, tiny_model_dir, tmp_path, capsys):
    code = main(["eval", "kilt", "--task", str(world["claims"]), "--model", str(tiny_model_dir), "--precision", "fp32",
                 "--workdir", str(tmp_path / "work"), "--output", str(tmp_path / "out"), "--reader",
                 str(trained["reader"]), "--reader-passages", "3"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "reader" in printed and "accuracy" in printed
    results = json.loads((tmp_path / "out" / "reader" / "results.json").read_text())
    assert "kilt_ac" in results["metrics"]
    assert results["metadata"]["memory"] == "computed for the retrieved passages"


def test_bad_input_is_one_line_naming_what_is_wrong(world, trained, tiny_model_dir, tmp_path, capsys):
    # a task whose labels the classification head cannot give
    task = tmp_path / "other-labels.jsonl"
    task.write_text("".join(json.dumps({"id": f"c{q}", "input": "x", "output": [{"answer": "NOT ENOUGH INFO"}]})
                            + "\n" for q in range(16)))
    assert main(["read", "predict", "--task", str(task), "--corpus", str(world["source"]), "--run",
                 str(world["claims_run"]), "--memory", str(trained["memory"]), "--reader", str(trained["reader"]),
                 "--output", str(tmp_path / "p.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"{task}:1: 16 question(s) have answers the reader's classification head cannot give (NOT ENOUGH INFO" in err
    # --k beyond the encoder's layers
    assert main(["read", "train", *trained["common"], "--model", str(tiny_model_dir), "--k", "5", "--output",
                 str(tmp_path / "k5")]) == 2
    assert "--k 5: the encoder" in capsys.readouterr().err
    # a reader folder that is none, refused before any retrieval
    with pytest.raises(SystemExit):
        main(["eval", "kilt", "--task", str(world["claims"]), "--reader", str(tmp_path)])
    assert "not a reader folder" in capsys.readouterr().err


def test_retrieved_passages_missing_from_the_memory_are_named_and_counted(world, trained, tiny_model_dir, tmp_path,
                                                                          capsys):
    small = tmp_path / "small-memory"
    run = tmp_path / "one.run"
    run.write_text("".join(f"c{q} Q0 P0#0 1 9 t\n" for q in range(16)))
    assert main(["read", "memory", "--task", str(world["claims"]), "--run", str(run), "--passages", "1",
                 "--model", str(tiny_model_dir), "--k", "1", "--output", str(small)]) == 0
    assert main(["read", "predict", *trained["common"], "--memory", str(small), "--reader", str(trained["reader"]),
                 "--output", str(tmp_path / "p.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "retrieved passages are not in" in err and str(small) in err and "P1#0" in err
    assert f"error: {world['claims_run']}: 1" in err  # the run file that names them


def test_a_memory_computed_for_eval_kilt_is_made_as_the_readers_was(world, trained, tiny_model_dir):
    from retromem.read.checkpoint import load_reader
    from retromem.read.kilt_reader import live_memory_for
    from retromem.read.read_options import ReaderPredictConfig
    from retromem.retrieve.runfile import read_trec_run

    reader = load_reader(trained["reader"])
    recorded = reader.spec.memory.encoder
    recorded.update(max_length=16, passage_prefix="passage: ")  # as from `index memory --max-length 16 ...`
    config = ReaderPredictConfig(task=str(world["claims"]), run=str(world["claims_run"]), passages=3,
                                 reader=str(trained["reader"]))
    memory = live_memory_for(reader, config, read_trec_run(world["claims_run"]))
    encoder, layer, _ = memory.info()
    assert (encoder["max_length"], encoder["passage_prefix"], layer) == (16, "passage: ", reader.spec.memory_layer)


def test_an_encoder_of_its_own_code_is_read_only_with_trust_remote_code(world, tiny_remote_model_dir, tmp_path,
                                                                        capsys):
    """read memory, read train, eval kilt --reader and read predict refuse such a model (and its reader) until
    --trust-remote-code is given; the reader folder keeps a copy of the model's code, so it loads after the model
    folder is gone."""
    from retromem.read.checkpoint import load_reader

    model = tmp_path / "model"
    shutil.copytree(tiny_remote_model_dir, model)
    common = ["--task", str(world["claims"]), "--run", str(world["claims_run"]), "--passages", "3"]
    memory, final, predictions = tmp_path / "memory", tmp_path / "run" / "final", tmp_path / "pred.jsonl"
    commands = [
        ["read", "memory", *common, "--model", str(model), "--k", "1", "--force-gold", "--output", str(memory)],
        ["read", "train", *common, "--memory", str(memory), "--model", str(model), "--k", "1", "--output",
         str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "4", "--precision", "fp32"],
        ["eval", "kilt", "--task", str(world["claims"]), "--model", str(model), "--precision", "fp32", "--workdir",
         str(tmp_path / "work"), "--output", str(tmp_path / "eval"), "--reader", str(final), "--reader-passages", "3"],
        ["read", "predict", *common, "--memory", str(memory), "--reader", str(final), "--output", str(predictions)],
    ]
    for argv in commands:
        if argv[1] == "predict":
            assert (final / "modeling_tiny.py").is_file()
            shutil.rmtree(model)
        assert main(argv) == 2
        assert "needs its own Python code" in capsys.readouterr().err
        assert main([*argv, "--trust-remote-code"]) == 0
    assert len(read_kilt_predictions(predictions)) == 16
    assert "kilt_ac" in json.loads((tmp_path / "eval" / "reader" / "results.json").read_text())["metrics"]
    assert type(load_reader(final, trust_remote_code=True).encoder).__name__ == "TinyRemoteModel"
    # its encoder exports (again only with the flag) as a folder with the code beside it
    exported = tmp_path / "exported"
    assert main(["read", "export-encoder", "--reader", str(final), "--output", str(exported)]) == 2
    assert "needs its own Python code" in capsys.readouterr().err and not exported.exists()
    assert main(["read", "export-encoder", "--reader", str(final), "--output", str(exported),
                 "--trust-remote-code"]) == 0
    assert (exported / "modeling_tiny.py").is_file()
    from transformers import AutoModel

    assert type(AutoModel.from_pretrained(exported, trust_remote_code=True)).__name__ == "TinyRemoteModel"


def test_an_exported_encoder_is_the_readers_and_makes_the_memory_of_a_new_reader(world, trained, tmp_path, capsys):
    import torch
    from transformers import AutoModel

    from retromem.read.checkpoint import load_reader
    from retromem.read.export import SOURCE_FILE

    exported = tmp_path / "encoder"
    assert main(["read", "export-encoder", "--reader", str(trained["reader"]), "--output", str(exported)]) == 0
    reader = load_reader(trained["reader"])
    plain = AutoModel.from_pretrained(exported).eval()
    ids = reader.tokenizer(["a protein binds the receptor"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(plain(**ids).last_hidden_state, reader.encoder(**ids).last_hidden_state)
    source = json.loads((exported / SOURCE_FILE).read_text())
    assert (source["live_layers"], source["num_layers"]) == (1, 2) and source["reader"].endswith("final")
    # the exported encoder is a memory encoder: its memory and a reader started from it
    common, memory = trained["common"], tmp_path / "memory"
    assert main(["read", "memory", *common, "--model", str(exported), "--k", "1", "--force-gold", "--output",
                 str(memory)]) == 0
    assert main(["read", "train", *common, "--memory", str(memory), "--model", str(exported), "--k", "1", "--output",
                 str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "4", "--precision", "fp32"]) == 0
    capsys.readouterr()
    assert main(["read", "export-encoder", "--reader", str(trained["reader"]), "--output", str(exported)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert main(["read", "export-encoder", "--reader", str(tmp_path), "--output", str(tmp_path / "other")]) == 2
    assert "is not a reader folder" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
