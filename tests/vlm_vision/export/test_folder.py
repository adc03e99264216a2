"""`vlm-vision export`: the folder's files, reading it back, LLaVA's projector file, refusals, safety.

transformers alone loading the export is `test_interop.py`; sharded runs exporting as one
process does are in `tests/vlm_vision/training/test_sharded.py`; the processor files alone in `test_files.py`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.vlm_vision.train_fixtures import QUESTION, write_colour_dataset, write_llm_folder, write_tower_folder
from vlm_vision import TrainConfig, train
from vlm_vision.commands.main import main
from vlm_vision.errors import InputError
from vlm_vision.evaluation.model import load_eval_model
from vlm_vision.export.folder import ExportSettings, export_model
from vlm_vision.model.llava_checkpoint import llava_checkpoint_parts
from vlm_vision.model.run_folder import load_trained
from vlm_vision.model.video_prompt import time_instruction

FRAMES = 4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny stage-2 run (LoRA + projector) that logs an eval loss."""
    root = tmp_path_factory.mktemp("export")
    data = write_colour_dataset(root / "data", n=8, frames=FRAMES)
    llm, tower = write_llm_folder(root / "llm"), write_tower_folder(root / "tower")
    final = train(TrainConfig(llm=str(llm), tower=str(tower), data=str(data), output_dir=str(root / "run"), stage=2,
                              max_steps=3, batch_size=2, num_frames=FRAMES, max_length=128, lora_r=4, lora_alpha=8,
                              lr=1e-2, projector_lr=1e-2, warmup_ratio=0.0, eval_data=str(data), eval_every=2,
                              progress=False))
    return {"root": root, "final": final, "llm": llm, "tower": tower, "data": data}


def _inputs(processor, data: Path):
    return processor([{"role": "user", "content": QUESTION}], videos=[data.parent / "videos" / "blue_2.mp4"])


def _edited_run(run, tmp_path: Path, **changes) -> Path:
    """A copy of the run's final/ whose vlm_config.json records other settings."""
    folder = tmp_path / "edited" / "final"
    shutil.copytree(run["final"], folder)
    config = json.loads((folder / "vlm_config.json").read_text())
    config.update(changes)
    (folder / "vlm_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.slow
def test_the_folder_is_complete_and_reads_back_to_the_same_logits(run, tmp_path):
    from transformers import LlavaNextVideoForConditionalGeneration

    out = export_model(ExportSettings(run=str(run["final"]), out=str(tmp_path / "hf"), max_shard_size="200KB"))
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja", "processor_config.json", "README.md"} <= names
    assert len([n for n in names if n.endswith(".safetensors")]) > 1  # sharded as transformers shards
    assert not list(tmp_path.glob(".tmp-*"))

    processor_config = json.loads((out / "processor_config.json").read_text())
    video = processor_config["video_processor"]
    assert video["num_frames"] == FRAMES and "fps" not in video and video["do_sample_frames"] is False
    assert video["size"] == {"shortest_edge": 28} and video["crop_size"] == {"height": 28, "width": 28}
    assert processor_config["patch_size"] == 7 and processor_config["vision_feature_select_strategy"] == "default"
    assert processor_config["image_processor"]["resample"] == 3 and processor_config["num_additional_image_tokens"] == 1
    config = json.loads((out / "config.json").read_text())
    tokenizer = json.loads((out / "tokenizer.json").read_text())
    added = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    assert (added["<image>"], added["<video>"]) == (config["image_token_index"], config["video_token_index"])

    model, processor = load_trained(run["final"])
    inputs = _inputs(processor, run["data"])
    with torch.no_grad():
        expected = model(**inputs).logits
        read_back, read_processor = load_eval_model(out)  # the project's reader of transformers folders
        assert read_back.tower.image_transform.image_size == 28  # from the nested processor_config.json
        torch.testing.assert_close(read_back(**inputs).logits, expected, rtol=1e-4, atol=1e-4)
        hf = LlavaNextVideoForConditionalGeneration.from_pretrained(out).eval()
        torch.testing.assert_close(hf(**inputs).logits, expected, rtol=1e-4, atol=1e-4)
    assert _inputs(read_processor, run["data"])["input_ids"].tolist() == inputs["input_ids"].tolist()

    card = (out / "README.md").read_text()
    assert str(run["llm"]) in card and str(run["tower"]) in card
    assert f"{FRAMES} frames per video" in card and "2x2 average pooling" in card and "eval_loss" in card
    assert "vllm serve hf" in card and "LlavaNextVideoForConditionalGeneration.from_pretrained" in card
    logged = [json.loads(line) for line in (run["final"].parent / "log.jsonl").read_text().splitlines()]
    assert f"{[e for e in logged if 'eval_loss' in e][-1]['eval_loss']:.4f}" in card


@pytest.mark.slow
def test_llava_projector_reloads_through_the_llava_reader(run, tmp_path):
    out = export_model(ExportSettings(run=str(run["final"]), out=str(tmp_path / "projector"), format="llava-projector"))
    state = torch.load(out / "mm_projector.bin", weights_only=True)
    assert sorted(state) == ["model.mm_projector.0.bias", "model.mm_projector.0.weight", "model.mm_projector.2.bias",
                             "model.mm_projector.2.weight"]
    copy = load_file(out / "mm_projector.safetensors")
    assert all(torch.equal(copy[k], state[k]) for k in state)
    mm = {k: v for k, v in json.loads((out / "config.json").read_text()).items() if k.startswith("mm_")}
    assert mm["mm_projector_type"] == "mlp2x_gelu" and mm["mm_vision_select_layer"] == -2

    # A LLaVA folder as LLaVA's stage 2 starts it: the base LLM, LLaVA's mm_* config keys, mm_projector.bin.
    llava = tmp_path / "llava"
    shutil.copytree(run["llm"], llava)
    config = json.loads((llava / "config.json").read_text()) | mm | {"model_type": "llava_llama"}
    (llava / "config.json").write_text(json.dumps(config))
    shutil.copy(out / "mm_projector.bin", llava)
    parts = llava_checkpoint_parts(llava, image_token_id=None, video_token_id=None, tower=str(run["tower"]))
    trained, _ = load_trained(run["final"])
    for (name, ours), theirs in zip(trained.projector.state_dict().items(), parts.projector.state_dict().values()):
        assert torch.equal(ours, theirs), name


@pytest.mark.parametrize("changes, setting", [
    ({"faster_token_stride": 2}, "faster_token_stride=2"),
    ({"time_markers": True}, "time_markers=True"),
    ({"video_newline": "grid"}, "video_newline='grid'"),
    ({"max_video_tokens": 64}, "max_video_tokens=64"),
    ({"pool_stride": 1}, "pool_stride=1"),
])
def test_what_transformers_cannot_express_is_refused_by_name(run, tmp_path, changes, setting):
    folder = _edited_run(run, tmp_path, **changes)
    with pytest.raises(InputError, match=f"cannot export {setting}") as refused:
        export_model(ExportSettings(run=str(folder), out=str(tmp_path / "out")))
    assert "transformers" in refused.value.expected
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".tmp-*"))


def test_multi_image_records_at_base_resolution_are_refused(run, tmp_path):
    records = [{"id": "two", "image": ["a.png", "b.png"], "conversations": [
        {"from": "human", "value": "<image>\n<image>\nSame?"}, {"from": "gpt", "value": "yes"}]}]
    data = tmp_path / "images.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = json.loads((run["final"] / "vlm_config.json").read_text())
    folder = _edited_run(run, tmp_path, train={**spec["train"], "data": str(data)})
    with pytest.raises(InputError, match="multi-image records at base resolution"):
        export_model(ExportSettings(run=str(folder), out=str(tmp_path / "out")))


@pytest.mark.slow
def test_existing_output_is_refused_and_a_failed_export_leaves_nothing(run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="the output folder exists"):
        export_model(ExportSettings(run=str(run["final"]), out=str(out)))
    assert (out / "keep.txt").read_text() == "mine"

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("vlm_vision.export.folder.model_card", broken)
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(ExportSettings(run=str(run["final"]), out=str(fresh)))
    assert not fresh.exists() and not list(tmp_path.glob(".tmp-*"))
    with pytest.raises(RuntimeError, match="disk full"):  # --overwrite: the old folder stays whole
        export_model(ExportSettings(run=str(run["final"]), out=str(out), overwrite=True))
    assert (out / "keep.txt").read_text() == "mine"
    monkeypatch.undo()
    export_model(ExportSettings(run=str(run["final"]), out=str(out), overwrite=True))
    assert not (out / "keep.txt").exists() and (out / "processor_config.json").is_file()


def test_cli_refuses_bad_input_in_one_line(run, tmp_path, capsys):
    assert main(["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    first = err.splitlines()[0]  # the weights message of every command: the path, then how to get it
    assert first.startswith("vlm-vision export: the model ") and str(tmp_path / "nowhere") in first
    assert "not available on this machine" in first and "Traceback" not in err
    assert main(["export", str(run["final"]), "--out", str(run["final"] / "inside")]) == 2
    assert "overlaps the model folder" in capsys.readouterr().err
    (tmp_path / "notamodel").mkdir()
    assert main(["export", str(tmp_path / "notamodel"), "--out", str(tmp_path / "out")]) == 2
    assert "not a model folder the project reads" in capsys.readouterr().err


@pytest.mark.slow
def test_a_merged_model_exports_as_its_run_does(run, tmp_path):
    from vlm_vision.model.run_folder import merge_trained

    merged = merge_trained(run["final"], tmp_path / "merged")
    folders = [export_model(ExportSettings(run=str(source), out=str(tmp_path / name)))
               for source, name in ((run["final"], "from_run"), (merged, "from_merged"))]
    assert sorted(p.name for p in folders[0].iterdir()) == sorted(p.name for p in folders[1].iterdir())
    tensors = [load_file(folder / "model.safetensors") for folder in folders]
    assert tensors[0].keys() == tensors[1].keys()
    for key in tensors[0]:
        torch.testing.assert_close(tensors[1][key], tensors[0][key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.slow
def test_a_time_instruction_model_exports_the_sentence_in_its_template_and_card(run, tmp_path):
    folder = _edited_run(run, tmp_path, time_instruction=True)
    out = export_model(ExportSettings(run=str(folder), out=str(tmp_path / "hf")))
    assert "The video lasts for " in (out / "chat_template.jinja").read_text()
    assert "trained with LLaVA-Video's time instruction" in (out / "README.md").read_text()


def _llava_own_folder(root: Path) -> Path:
    """A LLaVA-NeXT-Video checkpoint in LLaVA's own layout: the LLM's keys as they are, the tower under
    `model.vision_tower.vision_tower.*`, the projector as `model.mm_projector.{0,2}.*`, `mm_*` config keys,
    and LLaVA's tokenizer (no `<image>`/`<video>`)."""
    from projector import build_projector
    from projector.checkpoints import projector_state_dict
    from safetensors.torch import save_file
    from transformers import CLIPVisionModel

    folder, tower = write_llm_folder(root / "llava", seed=3), write_tower_folder(root / "tower", seed=4)
    llm = load_file(folder / "model.safetensors")
    vision = {f"model.vision_tower.vision_tower.{k}": v for k, v in
              CLIPVisionModel.from_pretrained(tower).state_dict().items()}
    torch.manual_seed(5)
    projector = projector_state_dict(build_projector("mlp2x_gelu", 32, 64), "llava")
    save_file(llm | vision | projector, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="llava_llama", architectures=["LlavaLlamaForCausalLM"], mm_vision_tower=str(tower),
                  mm_vision_select_layer=-2, mm_vision_select_feature="patch", mm_projector_type="mlp2x_gelu",
                  mm_hidden_size=32, mm_spatial_pool_stride=2, mm_spatial_pool_mode="average")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_an_original_llava_checkpoint_exports_with_placeholder_tokens_added(tmp_path):
    from transformers import CLIPVisionConfig, LlavaNextVideoForConditionalGeneration

    from video.decode import load_video
    from vlm_vision import VisionLanguageModel, VisionLanguageProcessor

    llava = _llava_own_folder(tmp_path)
    vocab = json.loads((llava / "config.json").read_text())["vocab_size"]
    out = export_model(ExportSettings(run=str(llava), out=str(tmp_path / "hf")))

    config = json.loads((out / "config.json").read_text())
    added = {t["content"]: t["id"] for t in json.loads((out / "tokenizer.json").read_text())["added_tokens"]}
    assert (added["<image>"], added["<video>"]) == (config["image_token_index"], config["video_token_index"])
    assert sorted((added["<image>"], added["<video>"])) == [vocab, vocab + 1]
    hf = LlavaNextVideoForConditionalGeneration.from_pretrained(out).eval()
    embeddings = hf.get_input_embeddings().weight
    assert embeddings.shape[0] == vocab + 2 == hf.get_output_embeddings().weight.shape[0]
    for weight in (embeddings, hf.get_output_embeddings().weight):  # untied in this LLM: both grown
        torch.testing.assert_close(weight[vocab:], weight[:vocab].mean(0).expand(2, -1))
    assert "an original LLaVA checkpoint" in (out / "README.md").read_text()

    # the exported processor files as the project reads them (transformers' video processor needs
    # torchvision, which this environment lacks; test_export_interop.py covers transformers alone)
    _, processor = load_eval_model(out)
    frames = load_video(Path(__file__).resolve().parents[2] / "data" / "cup.mp4", num_frames=FRAMES).frames
    inputs = processor([{"role": "user", "content": QUESTION}], videos=[np.asarray(frames)])
    assert (inputs["input_ids"] == added["<video>"]).sum() == FRAMES * 2 * 2  # 28 / 7 = 4x4 patches, 2x2 pooled

    # the project's own reader of the LLaVA folder, placeholders at the export's ids
    ours = VisionLanguageModel.from_llava_checkpoint(llava, image_token_id=added["<image>"],
                                                     video_token_id=added["<video>"],
                                                     vision_config=CLIPVisionConfig.from_pretrained(tmp_path / "tower"))
    VisionLanguageProcessor.for_model(processor.tokenizer, ours).resize_embeddings(ours)
    with torch.no_grad():
        theirs = hf(**inputs).logits[:, -1]
        expected = ours.eval()(**inputs).logits[:, -1]
    torch.testing.assert_close(theirs, expected, rtol=1e-4, atol=1e-4)


def test_an_original_llava_checkpoints_projector_exports_with_the_llm_as_it_was(tmp_path):
    llava = _llava_own_folder(tmp_path)
    config = json.loads((llava / "config.json").read_text())
    out = export_model(ExportSettings(run=str(llava), out=str(tmp_path / "projector"), format="llava-projector"))
    assert json.loads((out / "config.json").read_text())["vocab_size"] == config["vocab_size"]
    state = torch.load(out / "mm_projector.bin", weights_only=True)
    theirs = load_file(llava / "model.safetensors")
    assert all(torch.equal(v, theirs[k]) for k, v in state.items()) and len(state) == 4


def test_an_original_llava_checkpoint_without_tokenizer_template_is_refused_by_name(tmp_path):
    llava = _llava_own_folder(tmp_path)
    config = json.loads((llava / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (llava / "tokenizer_config.json").write_text(json.dumps(config))
    (llava / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(InputError, match="no chat template"):
        export_model(ExportSettings(run=str(llava), out=str(tmp_path / "hf")))
    assert not (tmp_path / "hf").exists()
