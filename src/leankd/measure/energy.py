"""Energy used while a block runs, read from hardware counters: NVML on NVIDIA GPUs, RAPL on Intel/AMD CPUs.

When no counter can be read the result is `joules=None` with the reason in `source`; we never substitute an
estimate (e.g. TDP x time), because the report must not present a guess as a measurement. Both counters cover
the whole device (the GPU, or the CPU packages), not just this process, so run measurements on a quiet machine.
"""
from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

import torch

from .devices import synchronize

DEFAULT_POWERCAP_ROOT = "/sys/class/powercap"
_TOP_LEVEL_ZONE = re.compile(r"^intel-rapl:\d+$")  # package zones; subzones look like intel-rapl:0:0


class _RaplZone:
    """One top-level RAPL zone; accumulates microjoules across reads, undoing counter wraparound."""

    def __init__(self, path: Path):
        self.path = path
        self.max_range_uj: int | None = None
        try:
            self.max_range_uj = int((path / "max_energy_range_uj").read_text().strip())
        except (OSError, ValueError):
            pass
        self.last_uj = self.read()
        self.total_uj = 0
        self.wrap_unknown = False

    def read(self) -> int:
        return int((self.path / "energy_uj").read_text().strip())

    def poll(self) -> None:
        now = self.read()
        delta = now - self.last_uj
        if delta < 0:  # the counter wrapped past max_energy_range_uj back to 0
            if self.max_range_uj is None:
                self.wrap_unknown = True
            else:
                delta += self.max_range_uj
        self.total_uj += max(delta, 0)
        self.last_uj = now


def find_rapl_zones(root: str | os.PathLike = DEFAULT_POWERCAP_ROOT) -> tuple[list[Path], str | None]:
    """Readable top-level RAPL zones under `root` and, when there are none, the reason why.

    Subzones (core, uncore, dram: `intel-rapl:0:N`) are skipped because the package zone already contains them,
    and a zone named `psys` (platform, on laptops) is skipped because it contains the packages too; summing
    either would count the same energy twice.
    """
    root = Path(root)
    if not root.is_dir():
        return [], f"no readable RAPL counters under {root} (the directory does not exist)"
    zones = sorted(p for p in root.iterdir() if _TOP_LEVEL_ZONE.match(p.name) and (p / "energy_uj").exists())
    if not zones:
        return [], f"no readable RAPL counters under {root} (no package zone intel-rapl:N with energy_uj)"
    readable, denied = [], []
    for zone in zones:
        try:
            name = (zone / "name").read_text().strip() if (zone / "name").exists() else ""
        except OSError:
            name = ""
        if name == "psys":
            continue
        try:
            int((zone / "energy_uj").read_text().strip())
            readable.append(zone)
        except (OSError, ValueError):
            denied.append(zone.name)
    if not readable:
        return [], (
            f"no readable RAPL counters under {root} ("
            + (f"{', '.join(denied)}: energy_uj is usually root-only; needs root or read permission" if denied
               else "only a psys zone, which is not a package counter")
            + ")"
        )
    return readable, None


class EnergyMeter:
    """Context manager measuring joules used during the block. After exit: `joules`, `source`, `.as_dict()`.

    - CUDA device + `pynvml` importable (pip package `nvidia-ml-py`): delta of
      `nvmlDeviceGetTotalEnergyConsumption` (mJ) for that GPU; `source="nvml"`. NVML updates this counter only
      every few tens of ms, so blocks should last well over a second.
    - CPU device + readable RAPL counters under `powercap_root`: sum over package zones of the `energy_uj` delta;
      `source="rapl"`. A background thread re-reads the counters every `poll_interval_s` so that a long block
      in which the counter wraps more than once is still counted correctly.
    - Otherwise `joules=None` and `source="not available: <reason>"`.
    """

    def __init__(
        self,
        device: torch.device | str = "cpu",
        powercap_root: str | os.PathLike = DEFAULT_POWERCAP_ROOT,
        poll_interval_s: float = 1.0,
    ):
        self.device = torch.device(device)
        self.powercap_root = powercap_root
        self.poll_interval_s = poll_interval_s
        self.joules: float | None = None
        self.source = "not available: block not run yet"
        self._zones: list[_RaplZone] = []
        self._nvml: Any = None
        self._nvml_handle: Any = None
        self._nvml_start_mj = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- context manager -------------------------------------------------------------------------------------
    def __enter__(self) -> "EnergyMeter":
        self.joules = None
        reason = self._start_nvml() if self.device.type == "cuda" else self._start_rapl()
        self.source = f"not available: {reason}" if reason else ("nvml" if self._nvml_handle is not None else "rapl")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._nvml_handle is not None:
            self._finish_nvml()
        elif self._zones:
            self._finish_rapl()

    def as_dict(self) -> dict:
        """`{"joules": float | None, "source": str}`."""
        return {"joules": self.joules, "source": self.source}

    # ---- NVML ------------------------------------------------------------------------------------------------
    def _start_nvml(self) -> str | None:
        try:
            import pynvml  # optional: pip install nvidia-ml-py
        except ImportError:
            return "pynvml not installed (pip install nvidia-ml-py)"
        try:
            pynvml.nvmlInit()
            handle = _nvml_handle_for(pynvml, self.device)
            synchronize(self.device)
            self._nvml_start_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        except Exception as e:  # NVMLError for unsupported GPUs (pre-Volta), driver problems, etc.
            _nvml_shutdown(pynvml)
            return f"NVML energy counter unreadable: {e}"
        self._nvml, self._nvml_handle = pynvml, handle
        return None

    def _finish_nvml(self) -> None:
        try:
            synchronize(self.device)
            end_mj = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._nvml_handle)
            self.joules = (end_mj - self._nvml_start_mj) / 1000.0
        except Exception as e:
            self.joules, self.source = None, f"not available: NVML energy counter unreadable at exit: {e}"
        finally:
            _nvml_shutdown(self._nvml)
            self._nvml = self._nvml_handle = None

    # ---- RAPL ------------------------------------------------------------------------------------------------
    def _start_rapl(self) -> str | None:
        paths, reason = find_rapl_zones(self.powercap_root)
        if reason:
            return reason
        try:
            self._zones = [_RaplZone(p) for p in paths]
        except (OSError, ValueError) as e:
            self._zones = []
            return f"RAPL counter unreadable: {e}"
        if self.poll_interval_s and self.poll_interval_s > 0:
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll_loop, name="leankd-rapl", daemon=True)
            self._thread.start()
        return None

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self._poll_all()
            except (OSError, ValueError):
                pass  # the final read at exit reports the error

    def _poll_all(self) -> None:
        with self._lock:
            for zone in self._zones:
                zone.poll()

    def _finish_rapl(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            self._poll_all()
        except (OSError, ValueError) as e:
            self.joules, self.source = None, f"not available: RAPL counter unreadable at exit: {e}"
        else:
            if any(z.wrap_unknown for z in self._zones):
                self.joules = None
                self.source = "not available: RAPL counter wrapped and max_energy_range_uj is unreadable"
            else:
                self.joules = sum(z.total_uj for z in self._zones) / 1e6
        self._zones = []


def _nvml_handle_for(pynvml: Any, device: torch.device) -> Any:
    """NVML handle for a torch CUDA device. Matched by UUID because torch indices follow CUDA_VISIBLE_DEVICES
    while NVML indices do not."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        text = str(uuid)
        return pynvml.nvmlDeviceGetHandleByUUID(text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}")
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        raise RuntimeError("cannot map the torch device to an NVML device (no UUID and CUDA_VISIBLE_DEVICES set)")
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def _nvml_shutdown(pynvml: Any) -> None:
    try:
        pynvml.nvmlShutdown()
    except Exception:
        pass
