import pytest
import torch

from wakemodel import devices
from wakemodel.devices import default_precision, environment_info, select_device
from wakemodel.errors import InputError, WakeModelError


@pytest.fixture
def fake_hardware(monkeypatch: pytest.MonkeyPatch):
    """Set which accelerators torch reports: call with cuda=..., mps=..., bf16=..."""

    def configure(*, cuda: bool, mps: bool, bf16: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 2 if cuda else 0)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Fake A100")
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return configure


@pytest.mark.parametrize(
    ("cuda", "mps", "requested", "accelerator", "lightning_accelerator"),
    [
        (True, True, "auto", "cuda", "gpu"),
        (False, True, "auto", "mps", "mps"),
        (False, False, "auto", "cpu", "cpu"),
        (True, True, "gpu", "cuda", "gpu"),
        (False, True, "gpu", "mps", "mps"),
        (True, False, "cuda", "cuda", "gpu"),
        (True, True, "mps", "mps", "mps"),
        (True, True, "cpu", "cpu", "cpu"),
        (False, False, "CPU", "cpu", "cpu"),
    ],
)
def test_select_device_picks_the_expected_accelerator(
    fake_hardware, cuda, mps, requested, accelerator, lightning_accelerator
):
    fake_hardware(cuda=cuda, mps=mps)
    choice = select_device(requested)
    assert choice.accelerator == accelerator
    assert choice.lightning_accelerator == lightning_accelerator
    assert torch.__version__ in choice.description


@pytest.mark.parametrize(
    ("cuda", "mps", "requested", "found"),
    [
        (False, False, "gpu", "CPU only"),
        (False, False, "cuda", "CPU only"),
        (False, False, "mps", "CPU only"),
        (False, True, "cuda", "Apple MPS"),
        (True, False, "mps", "2 CUDA GPU(s)"),
    ],
)
def test_missing_gpu_raises_one_line_error(fake_hardware, cuda, mps, requested, found):
    fake_hardware(cuda=cuda, mps=mps)
    with pytest.raises(WakeModelError) as error:
        select_device(requested)
    message = str(error.value)
    assert "\n" not in message
    assert found in message
    assert "--accelerator cpu" in message
    assert f"--accelerator {requested}" in message


def test_unknown_accelerator_is_an_input_error():
    with pytest.raises(InputError, match="tpu"):
        select_device("tpu")


@pytest.mark.parametrize(
    ("cuda", "mps", "bf16", "expected"),
    [
        (True, False, True, "bf16-mixed"),
        (True, False, False, "32"),
        (False, True, True, "32"),
        (False, False, True, "32"),
    ],
)
def test_default_precision_per_device(fake_hardware, cuda, mps, bf16, expected):
    fake_hardware(cuda=cuda, mps=mps, bf16=bf16)
    choice = select_device("auto")
    assert choice.precision == expected
    assert default_precision(choice.accelerator) == expected
    assert f"precision {expected}" in choice.description


def test_explicit_precision_overrides_default(fake_hardware):
    fake_hardware(cuda=True, mps=False, bf16=True)
    assert select_device("gpu", precision="16-mixed").precision == "16-mixed"


def test_cuda_description_names_the_gpu(fake_hardware):
    fake_hardware(cuda=True, mps=False)
    assert "Fake A100" in select_device("cuda").description


def test_environment_info_has_versions():
    info = environment_info(select_device("cpu"))
    assert info["torch"] == torch.__version__
    assert info["accelerator"] == "cpu"
    assert info["precision"] == "32"
    assert set(info) >= {"cuda", "cudnn", "lightning", "python", "wakemodel", "device"}
    assert all(isinstance(value, str) for value in info.values())


def test_found_devices_without_gpu_names_the_torch_build(fake_hardware):
    fake_hardware(cuda=False, mps=False)
    assert torch.__version__ in devices._found_devices()
