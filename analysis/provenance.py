"""What the hardware series are — measured, simulated or replayed — and which coupling direction has a physical
path, so that an answer never claims a path the run did not have (pure; no I/O).

A simulated GPU (`backend="sim"`) is heated by whatever its `--sim-load` names: its temperature and power can
follow the training job (through the job's CPU use), but its clocks cannot slow a job that runs on the CPU, so
hardware -> training has no physical path — unless the run opted into the *emulated clock path*
(`emulation="clock"`: each step stretched by the simulated card's clock deficit, trainer/emulation.py), which
makes one on purpose and is said as such. A replayed recording (`backend="replay"`) is another session's
hardware: nothing of this run can reach it, nor it this run.
"""

from __future__ import annotations

from dataclasses import dataclass

SIMULATED, REPLAYED = "sim", "replay"
NO_PATH = "no physical path"


@dataclass(frozen=True)
class Provenance:
    backend: str | None  # nvml, cpu, sim, replay, dcgm, nvidia-smi; None: the input does not say
    heat_source: str = ""  # what drives a simulated or replayed device
    device: str = ""  # the device's uuid (or label), for the first line
    emulation: str = ""  # "clock": the run's steps were stretched by the simulated card's clock (on purpose)

    @property
    def simulated(self) -> bool:
        return self.backend == SIMULATED

    @property
    def replayed(self) -> bool:
        return self.backend == REPLAYED

    def as_report(self) -> dict:
        """`inputs.hardware`'s fields: what was measured, in report.json."""
        return {"backend": self.backend, "simulated": self.simulated, "replayed": self.replayed,
                "measured": None if self.backend is None else not (self.simulated or self.replayed),
                "heat_source": self.heat_source or None, "emulation": self.emulation or None}

    def no_path(self, direction: str) -> str | None:
        """Why `direction` has no physical path in this run (None: it may have one)."""
        if self.replayed:
            return (f"replayed hardware: {self.heat_source or 'a recording'} is another session's hardware, "
                    "which nothing in this run can reach")
        if self.simulated and direction == "hardware_to_training" and self.emulation != "clock":
            return ("simulated hardware: a simulated GPU's heat and clocks cannot slow a job that does not run "
                    "on it (thermograd run --emulate-clock makes that path, labelled as emulation)")
        return None

    def label(self) -> str:
        """What measured the hardware, in a word for a figure's title: SIMULATED, REPLAYED or '' (a device)."""
        return "SIMULATED" if self.simulated else "REPLAYED" if self.replayed else ""

    def first_line(self) -> str:
        """The summary's first line: what measured the hardware, said before any verdict."""
        if self.simulated:
            emulated = (" EMULATED clock path: the job's steps were stretched by the card's clock deficit, so its "
                        "hardware -> training answer is an emulation's, not a measurement's."
                        if self.emulation == "clock" else "")
            return (f"SIMULATED hardware: {self.device or 'the device'}, thermograd's simulated GPU, heated by "
                    f"{self.heat_source or 'an unnamed load'}: no measurement of a real GPU." + emulated)
        if self.replayed:
            return (f"REPLAYED hardware: {self.device or 'the device'}, playing back "
                    f"{self.heat_source or 'a recording'}: not the hardware this run trained on.")
        if self.backend is None:
            return (f"Hardware of unknown kind: {self.device or 'the device'}; the input does not say whether a real "
                    "device, a simulation or a replay was measured, and the verdicts assume a real device.")
        return f"MEASURED hardware: {self.device or 'the device'}, read through {self.backend}."


def no_path_verdict(direction: str, question: str, reason: str) -> dict:
    """The verdict of a direction with no physical path: said plainly instead of a coupling verdict (its pairs
    are still computed and shown, for what they are)."""
    return {"direction": direction, "question": question, "coupled": False, "strength": NO_PATH,
            "physical_path": False,
            "summary": f"No physical path: {reason}. Not answered with a coupling verdict; its pairs below are shown "
                       "for what they are."}
