"""An export's processor files (`vlm_vision.export.files`): the chat template for typed parts renders
the training prompt, time instruction included, and transformers 4 gets its separate processor files."""

from __future__ import annotations

import json

import jinja2
import jinja2.sandbox
import pytest

from vlm_vision.export.files import ProcessorSettings, processor_files, typed_parts_template
from vlm_vision.model.video_prompt import time_instruction


def test_typed_parts_render_the_training_prompt_with_the_time_instruction():
    base = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def fail(message):
        raise jinja2.TemplateError(message)

    env.globals["raise_exception"] = fail
    template = env.from_string(typed_parts_template(base, time_instruction=True))
    times = [0.0, 0.125, 2.4]
    typed = [{"role": "user", "content": [{"type": "video", "duration": 2.5, "frame_times": times},
                                          {"type": "text", "text": "Why?"}]}]
    sentence = time_instruction(2.5, times)  # "... located at 0.00s,0.12s,2.40s.Please ..."
    expected = f"<|im_start|>user\n<video>\n{sentence}\nWhy?<|im_end|>\n<|im_start|>assistant\n"
    assert template.render(messages=typed, add_generation_prompt=True) == expected
    with pytest.raises(jinja2.TemplateError, match="time instruction"):
        template.render(messages=[{"role": "user", "content": [{"type": "video"}]}])
    plain = env.from_string(typed_parts_template(base))
    with pytest.raises(jinja2.TemplateError, match="unknown message part type: audio"):
        plain.render(messages=[{"role": "user", "content": [{"type": "audio"}]}])


def test_transformers_4_layout_has_separate_processor_files():
    settings = ProcessorSettings(image_size=336, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), patch_size=14,
                                 select_strategy="default", image_grid_pinpoints=[[336, 672]], num_frames=None,
                                 fps=1.0, chat_template="{{ x }}")
    four, five = processor_files(settings, 4), processor_files(settings, 5)
    assert sorted(four) == ["chat_template.jinja", "preprocessor_config.json", "processor_config.json",
                            "video_preprocessor_config.json"]
    assert sorted(five) == ["chat_template.jinja", "processor_config.json"]
    video = json.loads(four["video_preprocessor_config.json"])
    assert video["fps"] == 1.0 and "num_frames" not in video  # never both
    assert json.loads(four["preprocessor_config.json"])["image_grid_pinpoints"] == [[336, 672]]
    assert json.loads(five["processor_config.json"])["video_processor"] == {k: v for k, v in video.items()
                                                                            if k != "processor_class"}
