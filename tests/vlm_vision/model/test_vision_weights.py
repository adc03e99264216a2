"""Every checkpoint layout round-trips: the tests write it from a random transformers CLIP, load it
with `CLIPVisionTower.from_pretrained`, and compare the tower with that model (fp32, 1e-5).

Layouts written here: transformers folders (5.x bare keys, 4.x `vision_model.` keys, CLIPModel
sharded, .bin), a Hub id in a fake HF cache, OpenAI state dicts and TorchScript archives,
OpenCLIP folders, LLaVA folders (original and llava-hf). The weights are rounded to fp16 first so
that fp16 files (as OpenAI ships) are lossless.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

from vlm_vision import CLIPVisionTower
from vlm_vision.model.checkpoint_keys import openai_to_tower
from vlm_vision.model.vision_weights import load_vision_weights

TOL = 1e-5
VISION = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=2, image_size=32,
              patch_size=8)  # 64-wide heads like every CLIP, so OpenAI-layout files can infer the head count
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
            max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)


def make_clip(hidden_act: str = "quick_gelu", seed: int = 0) -> CLIPModel:
    """A random CLIPModel; every parameter perturbed and rounded to fp16-representable values."""
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(vision_config=VISION | {"hidden_act": hidden_act}, text_config=TEXT,
                                 projection_dim=16)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05).copy_(p.half().float())
    return model


def vision_part(clip: CLIPModel) -> dict[str, torch.Tensor]:
    """The vision weights of `clip` under transformers' CLIPVisionTransformer names (no prefix)."""
    return {k[len("vision_model."):]: v for k, v in clip.state_dict().items() if k.startswith("vision_model.")}


def reference_of(clip: CLIPModel) -> CLIPVisionModel:
    model = CLIPVisionModel(clip.config.vision_config).eval()
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in model.state_dict()) else ""
    model.load_state_dict({prefix + k: v for k, v in vision_part(clip).items()})
    return model


@pytest.fixture(scope="module")
def clip() -> CLIPModel:
    return make_clip("quick_gelu")


@pytest.fixture(scope="module")
def clip_gelu() -> CLIPModel:
    return make_clip("gelu", seed=1)


PIXELS = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def assert_matches(tower: CLIPVisionTower, clip: CLIPModel, select_layer: int = -2) -> None:
    with torch.no_grad():
        hidden = reference_of(clip)(pixel_values=PIXELS, output_hidden_states=True).hidden_states
    expected = hidden[select_layer] if tower.select_feature == "cls_patch" else hidden[select_layer][:, 1:]
    out = tower(PIXELS)
    assert out.shape == expected.shape
    assert (out - expected).abs().max().item() <= TOL


def openai_state_dict(clip: CLIPModel, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """`clip` under OpenAI's names (reference §9.1, inverted), with a few text-tower keys beside."""
    v = vision_part(clip)
    out = {"visual.conv1.weight": v["embeddings.patch_embedding.weight"],
           "visual.class_embedding": v["embeddings.class_embedding"],
           "visual.positional_embedding": v["embeddings.position_embedding.weight"],
           "visual.ln_pre.weight": v["pre_layrnorm.weight"], "visual.ln_pre.bias": v["pre_layrnorm.bias"],
           "visual.ln_post.weight": v["post_layernorm.weight"], "visual.ln_post.bias": v["post_layernorm.bias"],
           "visual.proj": clip.visual_projection.weight.T,
           "positional_embedding": clip.text_model.embeddings.position_embedding.weight,
           "token_embedding.weight": clip.text_model.embeddings.token_embedding.weight,
           "ln_final.weight": clip.text_model.final_layer_norm.weight,
           "ln_final.bias": clip.text_model.final_layer_norm.bias,
           "text_projection": clip.text_projection.weight.T, "logit_scale": clip.logit_scale}
    for i in range(VISION["num_hidden_layers"]):
        s, d = f"encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            out[d + f"attn.in_proj_{part}"] = torch.cat([v[s + f"self_attn.{p}_proj.{part}"] for p in "qkv"])
            out[d + f"attn.out_proj.{part}"] = v[s + f"self_attn.out_proj.{part}"]
            out[d + f"ln_1.{part}"] = v[s + f"layer_norm1.{part}"]
            out[d + f"ln_2.{part}"] = v[s + f"layer_norm2.{part}"]
            out[d + f"mlp.c_fc.{part}"] = v[s + f"mlp.fc1.{part}"]
            out[d + f"mlp.c_proj.{part}"] = v[s + f"mlp.fc2.{part}"]
    return {k: t.detach().to(dtype).contiguous().clone() for k, t in out.items()}


# ----- an OpenAI-structured module, to write TorchScript archives like openai/CLIP's ----------------

class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 2 * width)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(2 * width, width))]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, B, D), sequence first as OpenAI's
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self, size: int, patch: int, width: int, layers: int, heads: int, out_dim: int):
        super().__init__()
        self.input_resolution = size
        self.output_dim = out_dim
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros((size // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], 1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x).permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, 0]) @ self.proj


class OpenAIStyleCLIP(nn.Module):
    def __init__(self):
        super().__init__()
        self.visual = VisionTransformer(32, 8, 128, 3, 2, 16)
        self.positional_embedding = nn.Parameter(torch.zeros(16, 32))
        self.token_embedding = nn.Embedding(64, 32)
        self.ln_final = nn.LayerNorm(32)
        self.text_projection = nn.Parameter(torch.zeros(32, 16))
        self.logit_scale = nn.Parameter(torch.zeros([]))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image) * self.logit_scale.exp()


def write_torchscript(clip: CLIPModel, path: Path, how: str) -> Path:
    module = OpenAIStyleCLIP().eval()
    module.load_state_dict(openai_state_dict(clip))  # strict: the writer matches OpenAI's structure
    # One tensor as a view into a larger storage (nonzero offset), as shared storages are saved.
    pos = module.visual.positional_embedding
    flat = torch.cat([torch.full((5,), 7.0), pos.detach().flatten()])
    pos.data = flat[5:].view(pos.shape)
    if how == "script_fp16":  # openai/CLIP's archives hold fp16 weights
        archive = torch.jit.script(module.half())
    else:
        archive = torch.jit.trace(module, PIXELS)
    torch.jit.save(archive, str(path))
    return path


def write_hf_folder(folder: Path, clip: CLIPModel, *, layout: str, preprocessor: dict | None = None) -> Path:
    """transformers folders: "v5" (CLIPVisionModel.save_pretrained), "clip_sharded" (CLIPModel, 4 shards),
    "v4_safetensors" / "v4_bin" (4.x keys `vision_model.*` with the persisted position_ids)."""
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "v5":
        reference_of(clip).save_pretrained(folder)
    elif layout == "clip_sharded":
        clip.save_pretrained(folder, max_shard_size="200KB")
        assert len(list(folder.glob("model-*.safetensors"))) > 1
    else:
        sd = {"vision_model." + k: v.clone() for k, v in vision_part(clip).items()}
        sd["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
        if layout == "v4_bin":
            torch.save(sd, folder / "pytorch_model.bin")
        else:
            save_file(sd, folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps(clip.config.vision_config.to_dict()))
    if preprocessor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return folder


# ================================================================================================
# transformers folders and the Hub cache
# ================================================================================================

@pytest.mark.parametrize("layout", ["v5", "clip_sharded", "v4_safetensors", "v4_bin"])
def test_hf_folder_round_trip(tmp_path, clip, layout):
    folder = write_hf_folder(tmp_path / layout, clip, layout=layout)
    tower = CLIPVisionTower.from_pretrained(folder)
    assert tower.image_transform.image_size == 32  # no preprocessor config: CLIP's defaults at the config's size
    assert_matches(tower, clip)


@pytest.mark.parametrize("select_layer, select_feature", [(-1, "patch"), (0, "cls_patch"), (1, "patch")])
def test_hf_folder_select_layer_and_feature(tmp_path, clip, select_layer, select_feature):
    folder = write_hf_folder(tmp_path / "m", clip, layout="v5")
    tower = CLIPVisionTower.from_pretrained(folder, select_layer=select_layer, select_feature=select_feature)
    assert_matches(tower, clip, select_layer)


def test_hf_folder_with_gelu_uses_its_config(tmp_path, clip_gelu):
    tower = CLIPVisionTower.from_pretrained(write_hf_folder(tmp_path / "g", clip_gelu, layout="v5"))
    assert tower.config.hidden_act == "gelu"
    assert_matches(tower, clip_gelu)


def test_preprocessor_config_builds_the_transform(tmp_path, clip):
    pre = {"crop_size": {"height": 32, "width": 32}, "size": {"shortest_edge": 32}, "do_center_crop": True,
           "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "resample": 3,
           "rescale_factor": 1 / 255}
    tower = CLIPVisionTower.from_pretrained(write_hf_folder(tmp_path / "p", clip, layout="v5", preprocessor=pre))
    t = tower.image_transform
    assert (t.image_size, t.mean, t.std, t.mode) == (32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "crop")


def test_single_weights_file_reads_the_config_beside_it(tmp_path, clip_gelu):
    folder = write_hf_folder(tmp_path / "f", clip_gelu, layout="v4_safetensors")
    tower = CLIPVisionTower.from_pretrained(folder / "model.safetensors")
    assert tower.config.hidden_act == "gelu"
    assert_matches(tower, clip_gelu)


def test_dtype_and_device_are_honoured(tmp_path, clip):
    folder = write_hf_folder(tmp_path / "m", clip, layout="v5")
    fp32 = CLIPVisionTower.from_pretrained(folder)
    bf16 = CLIPVisionTower.from_pretrained(folder, dtype=torch.bfloat16, device="cpu")
    assert fp32.dtype == torch.float32
    assert bf16.dtype == torch.bfloat16 and bf16.device == torch.device("cpu")
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    out = bf16(PIXELS)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), fp32(PIXELS), atol=0.1, rtol=0.05)


def fake_hub_cache(cache: Path, repo_id: str, clip: CLIPModel) -> Path:
    """The HF cache layout: models--org--name/{refs/main, snapshots/<commit>/...}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    write_hf_folder(repo / "snapshots" / commit, clip, layout="v5")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return repo


def test_hub_id_loads_offline_from_the_cache(tmp_path, monkeypatch, clip):
    from huggingface_hub import constants

    fake_hub_cache(tmp_path / "hub", "tiny-org/tiny-clip", clip)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    # huggingface_hub reads the variables once at import; this process imported it already.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert_matches(CLIPVisionTower.from_pretrained("tiny-org/tiny-clip"), clip)
    with pytest.raises(FileNotFoundError, match=r"'tiny-org/other'.*not in the HF cache.*HF_HUB_OFFLINE=1"):
        CLIPVisionTower.from_pretrained("tiny-org/other")


@pytest.mark.slow
def test_hub_id_offline_in_a_fresh_process(tmp_path, clip):
    """The real thing: only environment variables, read by a new interpreter."""
    fake_hub_cache(tmp_path / "hub", "tiny-org/tiny-clip", clip)
    torch.save(PIXELS, tmp_path / "pixels.pt")
    script = ("import sys, torch; from vlm_vision import CLIPVisionTower; "
              "t = CLIPVisionTower.from_pretrained('tiny-org/tiny-clip'); "
              "torch.save(t(torch.load(sys.argv[1])), sys.argv[2])")
    env = os.environ | {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "pixels.pt"), str(tmp_path / "out.pt")],
                   env=env, check=True, cwd=Path(__file__).resolve().parents[3], timeout=300)
    with torch.no_grad():
        expected = reference_of(clip)(pixel_values=PIXELS, output_hidden_states=True).hidden_states[-2][:, 1:]
    assert (torch.load(tmp_path / "out.pt") - expected).abs().max() <= TOL


# ================================================================================================
# OpenAI and OpenCLIP
# ================================================================================================

@pytest.mark.parametrize("suffix, dtype", [(".pt", torch.float16), (".pth", torch.float32), (".bin", torch.float32)])
def test_openai_state_dict_round_trip(tmp_path, clip, suffix, dtype):
    path = tmp_path / f"ViT-tiny{suffix}"
    torch.save(openai_state_dict(clip, dtype), path)
    tower = CLIPVisionTower.from_pretrained(path)
    c = tower.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size, c.image_size,
            c.patch_size, c.hidden_act) == (128, 3, 2, 256, 32, 8, "quick_gelu")
    assert tower.dtype == torch.float32
    assert_matches(tower, clip)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("how", ["script_fp16", "trace_fp32"])
def test_openai_torchscript_archive_is_read_without_running_it(tmp_path, monkeypatch, clip, how):
    path = write_torchscript(clip, tmp_path / "ViT-tiny.pt", how)
    trusted = torch.jit.load(str(path)).state_dict()  # our own file: fine to execute here, to compare

    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load must not be used to read checkpoints")

    monkeypatch.setattr(torch.jit, "load", refuse)
    from vlm_vision.model.torchscript_weights import read_torchscript

    read = read_torchscript(path)
    assert set(read) == set(trusted)
    assert all(torch.equal(read[k], trusted[k]) and read[k].dtype == trusted[k].dtype for k in trusted)
    assert_matches(CLIPVisionTower.from_pretrained(path), clip)


_canary_calls = []


def _canary(*args):
    _canary_calls.append(args)
    return 0


def test_torchscript_archive_with_foreign_globals_is_refused(tmp_path, clip):
    """A data.pkl that names any other callable is rejected before anything is called."""
    good = write_torchscript(clip, tmp_path / "good.pt", "script_fp16")
    evil_pickle = (b"\x80\x02c" + f"{__name__}\n_canary\n".encode() + b"(X\x03\x00\x00\x00pwntR.")
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = evil_pickle if item.filename.endswith("/data.pkl") and item.filename.count("/") == 1 else src.read(item)
            dst.writestr(item, data)
    assert pickle.loads(evil_pickle) == 0 and _canary_calls == [("pwn",)]  # the payload does run if unpickled
    _canary_calls.clear()
    with pytest.raises(ValueError, match=r"refusing to load global .*test_vision_weights\._canary"):
        CLIPVisionTower.from_pretrained(evil)
    assert _canary_calls == []


def open_clip_config(quick_gelu: bool | None, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)) -> dict:
    model_cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 3, "width": 128, "patch_size": 8},
                 "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
    if quick_gelu is not None:
        model_cfg["quick_gelu"] = quick_gelu
    return {"model_cfg": model_cfg, "preprocess_cfg": {"mean": list(mean), "std": list(std)}}


@pytest.mark.parametrize("filename", ["open_clip_pytorch_model.bin", "open_clip_model.safetensors"])
def test_open_clip_folder_round_trip(tmp_path, clip, filename):
    sd = openai_state_dict(clip)
    if filename.endswith(".safetensors"):
        save_file(sd, tmp_path / filename)
    else:
        torch.save(sd, tmp_path / filename)
    (tmp_path / "open_clip_config.json").write_text(json.dumps(open_clip_config(quick_gelu=True)))
    for source in (tmp_path, tmp_path / filename):  # the folder, or the file with its config beside it
        tower = CLIPVisionTower.from_pretrained(source)
        assert tower.config.hidden_act == "quick_gelu"
        t = tower.image_transform
        assert (t.image_size, t.mean, t.std) == (32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        assert_matches(tower, clip)


def test_open_clip_gelu_model_follows_its_config(tmp_path, clip_gelu):
    """OpenCLIP's default activation is exact gelu: a config without `quick_gelu` means gelu."""
    torch.save(openai_state_dict(clip_gelu), tmp_path / "open_clip_pytorch_model.bin")
    (tmp_path / "open_clip_config.json").write_text(json.dumps(open_clip_config(quick_gelu=None)))
    tower = CLIPVisionTower.from_pretrained(tmp_path)
    assert tower.config.hidden_act == "gelu"
    assert_matches(tower, clip_gelu)


def test_open_clip_without_config_warns_and_assumes_quick_gelu(tmp_path, clip):
    torch.save(openai_state_dict(clip), tmp_path / "open_clip_pytorch_model.bin")
    for source in (tmp_path, tmp_path / "open_clip_pytorch_model.bin"):
        with pytest.warns(UserWarning, match="no open_clip_config.json beside the weights; assuming quick_gelu"):
            tower = CLIPVisionTower.from_pretrained(source)
        assert_matches(tower, clip)


def test_open_clip_unsupported_preprocessing_is_refused(tmp_path, clip):
    torch.save(openai_state_dict(clip), tmp_path / "open_clip_pytorch_model.bin")
    cfg = open_clip_config(quick_gelu=True)
    cfg["preprocess_cfg"]["resize_mode"] = "squash"
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="resize_mode='squash' is not supported"):
        CLIPVisionTower.from_pretrained(tmp_path)


def test_training_checkpoint_with_state_dict_and_module_prefix(tmp_path, clip):
    sd = {"module." + k: v for k, v in openai_state_dict(clip).items()}
    torch.save({"epoch": 3, "state_dict": sd}, tmp_path / "epoch_3.pt")
    assert_matches(CLIPVisionTower.from_pretrained(tmp_path / "epoch_3.pt"), clip)


# ================================================================================================
# LLaVA
# ================================================================================================

LLM_KEYS = {"model.embed_tokens.weight": (64, 16), "model.layers.0.self_attn.q_proj.weight": (16, 16),
            "model.norm.weight": (16,), "lm_head.weight": (64, 16), "model.mm_projector.0.weight": (16, 128),
            "model.mm_projector.0.bias": (16,)}


def write_llava(folder: Path, clip: CLIPModel, config: dict, *, fmt: str = "safetensors",
                prefix: str | None = "model.vision_tower.vision_tower.vision_model.") -> Path:
    """A LLaVA folder in two shards (LLM, then tower) with an index, like LLaVA's save_pretrained."""
    folder.mkdir(parents=True, exist_ok=True)
    llm = {k: torch.randn(s) for k, s in LLM_KEYS.items()}
    tower = {prefix + k: v.clone() for k, v in vision_part(clip).items()} if prefix else {}
    ext, save = ("safetensors", save_file) if fmt == "safetensors" else ("bin", torch.save)
    names = [f"model-00001-of-00002.{ext}", f"model-00002-of-00002.{ext}"]
    save(llm, folder / names[0])
    save(tower or {"model.norm.bias": torch.zeros(16)}, folder / names[1])
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    weight_map = {k: names[0] for k in llm} | {k: names[1] for k in tower}
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def llava_config(mm_vision_tower: str, **extra) -> dict:
    return {"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama", "hidden_size": 16,
            "mm_vision_tower": mm_vision_tower, "mm_vision_select_layer": -2,
            "mm_vision_select_feature": "patch", "mm_projector_type": "mlp2x_gelu"} | extra


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_llava_folder_with_tower_named_by_a_local_folder(tmp_path, clip_gelu, fmt):
    """mm_vision_tower points at a folder holding the tower's config (gelu here): that config is used."""
    tower_dir = write_hf_folder(tmp_path / "clip-tower", clip_gelu, layout="v5")
    folder = write_llava(tmp_path / "llava", clip_gelu, llava_config(str(tower_dir), image_aspect_ratio="pad"),
                         fmt=fmt)
    tower = CLIPVisionTower.from_pretrained(folder)
    assert tower.config.hidden_act == "gelu"
    assert tower.image_transform.mode == "pad"  # LLaVA-1.5's image_aspect_ratio="pad"
    assert_matches(tower, clip_gelu)


def test_llava_folder_with_unresolvable_tower_name_infers_from_shapes(tmp_path, clip):
    folder = write_llava(tmp_path / "llava", clip, llava_config("some-org/not-cached-clip"))
    tower = CLIPVisionTower.from_pretrained(folder)
    assert (tower.config.hidden_act, tower.config.num_attention_heads) == ("quick_gelu", 2)
    assert tower.image_transform.mode == "crop"
    assert_matches(tower, clip)


def test_llava_folder_whose_config_disagrees_with_the_weights(tmp_path, clip):
    """The name resolves to the real ViT-L/14@336 config; the tiny weights do not fit it."""
    folder = write_llava(tmp_path / "llava", clip, llava_config("openai/clip-vit-large-patch14-336"))
    with pytest.raises(ValueError, match=r"embeddings\.patch_embedding\.weight has shape \(128, 3, 8, 8\), "
                                         r"expected \(1024, 3, 14, 14\)"):
        CLIPVisionTower.from_pretrained(folder)


def test_llava_folder_without_tower_weights(tmp_path, clip):
    folder = write_llava(tmp_path / "llava", clip, llava_config("openai/clip-vit-large-patch14-336"), prefix=None)
    with pytest.raises(ValueError, match="stores no vision tower weights.*'openai/clip-vit-large-patch14-336'"):
        CLIPVisionTower.from_pretrained(folder)


def test_llava_hf_folder(tmp_path, clip):
    """llava-hf layout: `model.vision_tower.vision_model.*` with the tower's config in `vision_config`."""
    folder = tmp_path / "llava-hf"
    folder.mkdir()
    sd = {"model.vision_tower.vision_model." + k: v.clone() for k, v in vision_part(clip).items()}
    sd |= {"model.language_model.layers.0.mlp.up_proj.weight": torch.randn(8, 8), "lm_head.weight": torch.randn(4, 8)}
    save_file(sd, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"model_type": "llava_next_video",
                                                    "vision_config": clip.config.vision_config.to_dict()}))
    assert_matches(CLIPVisionTower.from_pretrained(folder), clip)
    (folder / "config.json").write_text(json.dumps({"model_type": "llava_onevision",
                                                    "vision_config": {"model_type": "siglip_vision_model"}}))
    with pytest.raises(ValueError, match="'siglip_vision_model'; this tower implements CLIP ViTs only"):
        CLIPVisionTower.from_pretrained(folder)


# ================================================================================================
# Bad input
# ================================================================================================

def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder.*missing.pt"):
        CLIPVisionTower.from_pretrained(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="no such file or folder: 'weights/missing.safetensors'"):
        CLIPVisionTower.from_pretrained("weights/missing.safetensors")


def test_text_file_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.pt").write_text("these are not weights\n")
    with pytest.raises(ValueError, match="notes.pt is not a checkpoint"):
        CLIPVisionTower.from_pretrained(tmp_path / "notes.pt")


def test_zip_that_is_not_a_torch_file(tmp_path):
    with zipfile.ZipFile(tmp_path / "w.pt", "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="w.pt is a zip file but not a torch checkpoint"):
        CLIPVisionTower.from_pretrained(tmp_path / "w.pt")


class NotAStateDict:
    pass


def test_pickled_objects_are_not_unpickled(tmp_path):
    torch.save({"model": NotAStateDict()}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        CLIPVisionTower.from_pretrained(tmp_path / "model.pt")


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="cannot tell which file holds the weights.*found none"):
        CLIPVisionTower.from_pretrained(tmp_path)


def test_mis_shaped_hf_key_is_named(tmp_path, clip):
    folder = write_hf_folder(tmp_path / "m", clip, layout="v4_safetensors")
    from safetensors.torch import load_file

    sd = load_file(folder / "model.safetensors")
    sd["vision_model.encoder.layers.1.mlp.fc1.weight"] = torch.zeros(250, 128)
    save_file(sd, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"vision_model\.encoder\.layers\.1\.mlp\.fc1\.weight has shape "
                                         r"\(250, 128\), expected \(256, 128\)"):
        CLIPVisionTower.from_pretrained(folder)


def test_mis_shaped_openai_key_is_named(tmp_path, clip):
    sd = openai_state_dict(clip)
    sd["visual.transformer.resblocks.2.attn.out_proj.weight"] = torch.zeros(128, 127)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"visual\.transformer\.resblocks\.2\.attn\.out_proj\.weight has shape "
                                         r"\(128, 127\), expected \(128, 128\)"):
        CLIPVisionTower.from_pretrained(tmp_path / "bad.pt")


def test_q_k_v_of_different_shapes_are_named(tmp_path, clip):
    folder = write_hf_folder(tmp_path / "m", clip, layout="v4_bin")
    sd = torch.load(folder / "pytorch_model.bin")
    sd["vision_model.encoder.layers.0.self_attn.k_proj.bias"] = torch.zeros(120)
    torch.save(sd, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"cannot fuse.*k_proj\.bias \(120,\)"):
        CLIPVisionTower.from_pretrained(folder)


def test_unconsumed_and_missing_keys_are_named(tmp_path, clip):
    sd = openai_state_dict(clip)
    sd["visual.transformer.resblocks.0.ls_1.gamma"] = torch.ones(128)  # OpenCLIP layer scale: not supported
    torch.save(sd, tmp_path / "ls.pt")
    with pytest.raises(ValueError, match=r"unconsumed vision keys.*visual\.transformer\.resblocks\.0\.ls_1\.gamma"):
        CLIPVisionTower.from_pretrained(tmp_path / "ls.pt")
    sd = openai_state_dict(clip)
    del sd["visual.ln_pre.bias"]
    torch.save(sd, tmp_path / "no_ln_pre.pt")
    with pytest.raises(KeyError, match=r"missing vision key visual\.ln_pre\.bias"):
        CLIPVisionTower.from_pretrained(tmp_path / "no_ln_pre.pt")


def test_resnet_and_unknown_layouts(tmp_path):
    torch.save({"visual.conv1.weight": torch.zeros(8, 3, 3, 3), "visual.attnpool.c_proj.weight": torch.zeros(4, 4)},
               tmp_path / "rn50.pt")
    with pytest.raises(ValueError, match="ResNet CLIP"):
        CLIPVisionTower.from_pretrained(tmp_path / "rn50.pt")
    save_file({"patch_embed.proj.weight": torch.zeros(8, 3, 4, 4), "blocks.0.attn.qkv.weight": torch.zeros(24, 8)},
              tmp_path / "timm.safetensors")
    with pytest.raises(ValueError, match=r"expected one CLIP ViT image tower, found 0.*patch_embed\.proj\.weight"):
        CLIPVisionTower.from_pretrained(tmp_path / "timm.safetensors")


def test_openai_to_tower_matches_the_hf_map(clip):
    """The two key maps agree on the same weights (q, k, v stacked in the same order)."""
    from vlm_vision.model.checkpoint_keys import hf_to_tower

    ours_from_openai = openai_to_tower(openai_state_dict(clip))
    ours_from_hf = hf_to_tower(clip.state_dict())
    assert set(ours_from_openai) == set(ours_from_hf)
    assert all(torch.equal(ours_from_openai[k], ours_from_hf[k]) for k in ours_from_hf)


def test_load_vision_weights_returns_config_weights_transform(tmp_path, clip):
    torch.save(openai_state_dict(clip), tmp_path / "w.pt")
    config, sd, transform = load_vision_weights(tmp_path / "w.pt")
    assert isinstance(config, CLIPVisionConfig) and transform is None
    assert sd["blocks.0.attn.qkv.weight"].shape == (384, 128) and "blocks.2.mlp.fc2.bias" in sd


def test_block_count_disagreeing_with_the_config(tmp_path, clip):
    folder = write_hf_folder(tmp_path / "m", clip, layout="v5")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"num_hidden_layers": 2}))
    with pytest.raises(ValueError, match=r"the config has 2 blocks, the weights 3; missing \[\], "
                                         r"extra \['encoder\.layers\.2\."):
        CLIPVisionTower.from_pretrained(folder)
