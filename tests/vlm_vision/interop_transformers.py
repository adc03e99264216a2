"""Run by the interop Python (transformers, torchvision and av alone): load an export as a downstream
user does and write what it computes.

    python interop_transformers.py EXPORT WORK

WORK holds `frames-K.npy` (uint8[T, H, W, 3], already sampled) and `ours-K.npy` (our pixel values
of the same frames). For each K this writes `theirs-K.npz`: the prompt, input ids, transformers'
`pixel_values_videos`, the next-token logits (fp32) given our pixel values, and the greedy answer
from transformers' own pixel values. This file imports nothing of this project (asserted).
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

try:
    import vlm_vision  # noqa: F401
except ImportError:
    pass
else:
    sys.exit("vlm_vision is importable in the interop environment; it must hold transformers alone")

from transformers import AutoProcessor, LlavaNextVideoForConditionalGeneration  # noqa: E402

QUESTION = "What colour is this video?"
NEW_TOKENS = 8


def main(export: str, work: str) -> None:
    torch.manual_seed(0)
    work_dir = Path(work)
    processor = AutoProcessor.from_pretrained(export)
    model = LlavaNextVideoForConditionalGeneration.from_pretrained(export, dtype=torch.float32).eval()
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    summary = {"processor": type(processor).__name__, "video_processor": type(processor.video_processor).__name__,
               "do_sample_frames": processor.video_processor.do_sample_frames, "prompt": prompt}
    for frames_file in sorted(work_dir.glob("frames-*.npy")):
        key = frames_file.stem.split("-", 1)[1]
        frames = np.load(frames_file)
        inputs = processor(text=prompt, videos=[frames], add_special_tokens=False, return_tensors="pt")
        ours = torch.from_numpy(np.load(work_dir / f"ours-{key}.npy"))
        with torch.no_grad():
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                           pixel_values_videos=ours).logits[:, -1]
            answer = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        np.savez(work_dir / f"theirs-{key}.npz", input_ids=inputs["input_ids"].numpy(),
                 pixel_values_videos=inputs["pixel_values_videos"].numpy(), logits=logits.float().numpy(),
                 answer=answer[:, inputs["input_ids"].shape[1]:].numpy())
    (work_dir / "summary.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main(*sys.argv[1:])
