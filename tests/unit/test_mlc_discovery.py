"""The library-matching rule of `mlc_discovery`, on names only."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.engines.mlc_discovery import device_family, find_quantization, match_library

QWEN_7B = "Qwen2.5-7B-Instruct-q4f16_1-MLC"


def libs(*names: str) -> list[Path]:
    return [Path("dist/libs") / name for name in names]


@pytest.mark.parametrize(
    ("name", "tag"),
    [
        (QWEN_7B, "q4f16_1"),
        ("Llama-3-8B-Instruct-q4f16_0-MLC", "q4f16_0"),
        ("SmolLM2-135M-Instruct-q0f16-MLC", "q0f16"),
        ("Mistral-7B-q4f16_autoawq-MLC", "q4f16_autoawq"),
        ("Llama-3-8B-e4m3_e4m3_f16-MLC", "e4m3_e4m3_f16"),
        ("my-model", None),
    ],
)
def test_find_quantization(name: str, tag: str | None) -> None:
    assert find_quantization(name) == tag


def test_seed_layout_matches_a_shorter_library_name() -> None:
    # Seed 002: the library drops "Instruct" and "-MLC".
    found = match_library(
        "Llama-3-8B-Instruct-q4f16_1-MLC", None, libs("Llama-3-8B-q4f16_1.dll"), platform="win32"
    )
    assert found == Path("dist/libs/Llama-3-8B-q4f16_1.dll")


def test_longest_shared_prefix_wins() -> None:
    candidates = libs("Qwen2.5-7B-q4f16_1.dll", "Qwen2.5-7B-Instruct-q4f16_1-MLC-cpu.so")
    found = match_library(QWEN_7B, "q4f16_1", candidates, platform="win32")
    assert found == Path("dist/libs/Qwen2.5-7B-Instruct-q4f16_1-MLC-cpu.so")


@pytest.mark.parametrize(
    "other",
    [
        "Qwen2.5-0.5B-Instruct-q4f16_1-MLC.so",  # another size
        "Qwen2.5-7B-Instruct-q4f32_1-MLC.so",  # another quantization
        "Qwen2.5-7B-Instruct-q4f16_10-MLC.so",  # a tag that only starts alike
        "Llama-3-8B-q4f16_1.so",  # another model
        "Qwen2.5-7B-Instruct-MLC.so",  # no tag at all
    ],
)
def test_a_library_of_another_model_never_matches(other: str) -> None:
    assert match_library(QWEN_7B, "q4f16_1", libs(other)) is None


def test_device_and_platform_break_ties() -> None:
    candidates = libs(
        "Qwen2.5-7B-Instruct-q4f16_1-cuda.so",
        "Qwen2.5-7B-Instruct-q4f16_1-vulkan.dll",
        "Qwen2.5-7B-Instruct-q4f16_1-vulkan.so",
    )
    pick = match_library(QWEN_7B, "q4f16_1", candidates, device="vulkan:0", platform="linux")
    assert pick == Path("dist/libs/Qwen2.5-7B-Instruct-q4f16_1-vulkan.so")
    pick = match_library(QWEN_7B, "q4f16_1", candidates, device="vulkan", platform="win32")
    assert pick == Path("dist/libs/Qwen2.5-7B-Instruct-q4f16_1-vulkan.dll")
    pick = match_library(QWEN_7B, "q4f16_1", candidates, device="auto", platform="linux")
    assert pick == Path("dist/libs/Qwen2.5-7B-Instruct-q4f16_1-cuda.so")


def test_a_library_built_for_another_device_is_skipped() -> None:
    candidates = libs("Qwen2.5-7B-Instruct-q4f16_1-MLC-cuda.so", "Qwen2.5-7B-q4f16_1.so")
    pick = match_library(QWEN_7B, "q4f16_1", candidates, device="cpu")
    assert pick == Path("dist/libs/Qwen2.5-7B-q4f16_1.so")
    assert match_library(QWEN_7B, "q4f16_1", candidates[:1], device="cpu") is None


def test_names_are_compared_normalised() -> None:
    pick = match_library(QWEN_7B, "q4f16_1", libs("qwen2_5-7b-instruct-q4f16_1.so"))
    assert pick == Path("dist/libs/qwen2_5-7b-instruct-q4f16_1.so")


def test_device_family() -> None:
    assert device_family("cuda:1") == "cuda"
    assert device_family("AUTO") == "auto"
