"""ZeroShotClassifier: logits equal transformers.CLIPModel's for the same weights and prompts."""

import json
import pathlib
import warnings

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPModel

from tests.vlm_vision.tiny_clip import save_tiny_clip, tiny_clip, tiny_tokenizer
from vlm_vision.model.transforms import CLIPImageTransform
from vlm_vision.model.zero_shot import ZeroShotClassifier, average_frame_embeddings

CLASSES = ["cat", "dog", "red square", "the colour blue"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> pathlib.Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def clf(saved) -> ZeroShotClassifier:
    return ZeroShotClassifier.from_pretrained(saved)


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(3, 40, 52, 3), dtype=np.uint8)  # (B, H, W, 3)


def _reference_logits(clf: ZeroShotClassifier, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """What transformers' CLIPModel gives for these pixels and prompts."""
    reference = CLIPModel.from_pretrained(clf.model.name_or_path).eval()
    text = clf.tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        return reference(pixel_values=pixels, input_ids=text["input_ids"],
                         attention_mask=text["attention_mask"]).logits_per_image


def test_logits_match_clip_model(clf, images):
    pixels = clf.image_transform(images)  # (3, 3, 32, 32)
    expected = _reference_logits(clf, pixels, [f"a photo of a {c}." for c in CLASSES])
    torch.testing.assert_close(clf.logits(images, CLASSES), expected)
    torch.testing.assert_close(clf.logits(pixels, CLASSES), expected)  # already preprocessed
    probs = clf.classify(images, CLASSES)
    torch.testing.assert_close(probs, expected.softmax(-1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))


def test_every_image_input_kind_gives_the_same_answer(clf, images):
    expected = clf.logits(images, CLASSES)  # (3, 4)
    pil = [PIL.Image.fromarray(x) for x in images]
    torch.testing.assert_close(clf.logits(pil, CLASSES), expected)
    torch.testing.assert_close(clf.logits(pil[1], CLASSES), expected[1:2])
    torch.testing.assert_close(clf.logits(torch.from_numpy(images), CLASSES), expected)


def test_chunking_does_not_change_the_result(saved, clf, images):
    small = ZeroShotClassifier.from_pretrained(saved, batch_size=2)
    torch.testing.assert_close(small.logits(images, CLASSES), clf.logits(images, CLASSES))


def test_templates_are_averaged_as_normalised_embeddings(clf, images):
    templates = ["a photo of a {}.", "the {}", "a {} of the colour"]
    reference = CLIPModel.from_pretrained(clf.model.name_or_path).eval()
    text = clf.tokenizer([t.format(c) for c in CLASSES for t in templates], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = reference(pixel_values=clf.image_transform(images), **text)
    per_prompt = out.text_embeds.view(len(CLASSES), len(templates), -1)  # (C, K, D), already unit length
    classes = F.normalize(per_prompt.mean(1), dim=-1)  # (C, D)
    expected = reference.logit_scale.exp() * out.image_embeds @ classes.T  # (B, C)
    torch.testing.assert_close(clf.logits(images, CLASSES, templates), expected)
    # a genuine ensemble: not the same as any single template
    assert not torch.allclose(clf.logits(images, CLASSES, templates[:1]), expected)


def test_long_prompts_are_truncated_with_a_warning(clf, images):
    long_name = " ".join(["cat"] * 100)  # 100 word tokens + start + end > 77
    with pytest.warns(UserWarning, match="77-token limit were truncated"):
        got = clf.logits(images, [long_name, "dog"])
    ids = clf.tokenizer([f"a photo of a {long_name}."], truncation=True, max_length=77)["input_ids"][0]
    assert len(ids) == 77 and ids[-1] == clf.tokenizer.eos_token_id  # the pooled end token survives
    expected = _reference_logits(clf, clf.image_transform(images), [f"a photo of a {long_name}.", "a photo of a dog."])
    torch.testing.assert_close(got, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # short prompts: no warning
        clf.logits(images, CLASSES)


def test_from_pretrained_reads_the_preprocessor_config(saved, tmp_path, images):
    folder = tmp_path / "with_config"
    folder.mkdir()
    for f in saved.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": {"height": 32, "width": 32}, "size": {"shortest_edge": 32}, "image_mean": mean,
         "image_std": std, "resample": 3, "rescale_factor": 1 / 255}))
    clf = ZeroShotClassifier.from_pretrained(folder)
    assert clf.image_transform.mean == tuple(mean) and clf.image_transform.std == tuple(std)
    torch.testing.assert_close(clf.image_transform(images), CLIPImageTransform(32, mean, std)(images))


def test_constructor_takes_a_model_and_tokenizer(tmp_path, images):
    tokenizer = tiny_tokenizer(tmp_path / "tok")
    model = tiny_clip(tokenizer, image_size=48)
    clf = ZeroShotClassifier(model, tokenizer)
    assert clf.image_transform.image_size == 48
    assert clf.classify(images, CLASSES).shape == (3, 4)
    with pytest.raises(TypeError, match="CLIPModel"):
        ZeroShotClassifier(model.vision_model, tokenizer)


def test_bad_inputs_are_named(clf, images):
    with pytest.raises(TypeError, match="not one string"):
        clf.classify(images, "cat")
    with pytest.raises(ValueError, match="at least one class"):
        clf.classify(images, [])
    with pytest.raises(ValueError, match=r"no '\{\}'|none: \['a photo'\]"):
        clf.classify(images, CLASSES, templates=["a photo"])
    with pytest.raises(ValueError, match=r"float\[B, 3, 32, 32\].*\(2, 3, 64, 64\)"):
        clf.classify(torch.zeros(2, 3, 64, 64), CLASSES)
    with pytest.raises(TypeError, match="path or a video.VideoClip"):
        clf.classify_video([123], CLASSES)


def test_average_frame_embeddings():
    frames = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 5.0]])  # video of 2 frames, then an image
    got = average_frame_embeddings(frames, [2, 1])
    torch.testing.assert_close(got, torch.tensor([[2 ** -0.5, 2 ** -0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"\[2, 2\].*3 rows"):
        average_frame_embeddings(frames, [2, 2])


def test_classify_video_averages_frame_embeddings(clf, tmp_path):
    from tests.video.synth import make_numbered_video
    from video.decode import load_video

    paths = [make_numbered_video(tmp_path / f"v{i}.mp4", num_frames=24 + 8 * i) for i in range(2)]
    probs = clf.classify_video(paths, CLASSES, num_frames=4)
    assert probs.shape == (2, 4)
    # by hand: the frames as images, their unit embeddings averaged and renormalised
    expected = []
    for path in paths:
        clip = load_video(path, num_frames=4)
        assert clip.frames.shape[0] == 4
        frames = clf.image_embeddings(clip.frames)  # (4, D), unit length
        video = F.normalize(frames.mean(0, keepdim=True), dim=-1)  # (1, D)
        expected.append((clf.model.logit_scale.exp() * video @ clf.class_embeddings(CLASSES).T).softmax(-1))
    torch.testing.assert_close(probs, torch.cat(expected).detach())
    # an already decoded clip gives the same as its file
    torch.testing.assert_close(clf.classify_video(load_video(paths[1], num_frames=4), CLASSES), probs[1:])


def test_a_video_that_does_not_decode_raises(clf, tmp_path):
    from video.clip import VideoDecodeError

    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        clf.classify_video(tmp_path / "broken.mp4", CLASSES)
