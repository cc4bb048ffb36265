"""Sound devices for the tools: loading PortAudio, listing devices, picking one by `--input-device` /
`--output-device`, and one-line errors naming the device."""

from __future__ import annotations

from moshi_mlx.constants import SAMPLE_RATE

from .cli_common import EXIT_DEVICE, fail


def import_sounddevice():
    try:
        import sounddevice as sd
    except OSError as e:  # the PortAudio shared library is missing
        fail(f"cannot use audio: {e} (on Linux: `sudo apt-get install libportaudio2`)", EXIT_DEVICE)
    except Exception as e:  # noqa: BLE001 - PortAudio found no usable sound system (sd.PortAudioError)
        fail(f"cannot use audio: {' '.join(str(e).split())}; is there a sound card (and a running sound server)?",
             EXIT_DEVICE)
    return sd


def list_devices(sd) -> None:
    """--list-devices: the table, or one line saying there is nothing to list."""
    devices = sd.query_devices()
    if len(devices) == 0:
        fail("no sound devices found: plug in a microphone and speakers (or headphones), or check that the "
             "sound server runs", EXIT_DEVICE)
    print(devices)


class DeviceError(Exception):
    """A sound device cannot be used; the message names it and says what to do."""


def parse_device(spec: str | None):
    """`--input-device` text to what PortAudio takes: an index, a name (substring), or None (default)."""
    if spec is None:
        return None
    return int(spec) if spec.strip().isdigit() else spec


def pick_device(sd, spec: str | None, kind: str) -> tuple[object, int, str]:
    """`(device, rate, name)` of a mono float32 `kind` ("input" or "output") device: 24 kHz where it takes
    that, else its own rate (resampled here)."""
    device = parse_device(spec)
    what, flag = ("microphone", "--input-device") if kind == "input" else ("speaker", "--output-device")
    label = f"the default {what}" if spec is None else f"{flag} {spec}"
    try:
        info = sd.query_devices(device, kind=kind)
    except (ValueError, sd.PortAudioError) as e:
        raise DeviceError(f"{label}: no such {what} ({e}); see --list-devices") from None
    if info.get(f"max_{kind}_channels", 0) < 1:
        raise DeviceError(f"{label} ({info['name']}) has no {kind} channels; see --list-devices")
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    rate = SAMPLE_RATE
    try:
        check(device, channels=1, dtype="float32", samplerate=rate)
    except (ValueError, sd.PortAudioError):
        rate = int(info["default_samplerate"])
        try:
            check(device, channels=1, dtype="float32", samplerate=rate)
        except (ValueError, sd.PortAudioError) as e:
            raise DeviceError(f"{label} ({info['name']}) cannot take mono float audio ({e})") from None
    return device, rate, info["name"]
