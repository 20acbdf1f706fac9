"""What nvidia-smi says of each GPU a runner was given: asked here, never through CUDA, which a runner that forks cells
must not initialise (bench.run.preload). The local executor asks each GPU's memory (its room for cells), the GPU
ledger each GPU's UUID (the name its ledger file takes)."""

from __future__ import annotations


def query_gpus(devices: list[str], fields: list[str]) -> dict[str, list[str]] | None:
    """Each device's values of nvidia-smi's `--query-gpu` `fields`, in their order, as nvidia-smi wrote them
    (without units, stripped); `-i` takes an index or a UUID, as CUDA_VISIBLE_DEVICES does. None when it cannot say
    for every device: no nvidia-smi, an error or a timeout, an exit status other than 0, or an answer other than one
    line of as many values as `fields`. Whether a value means anything (a number, a UUID) is the caller's to check."""
    import subprocess

    answers = {}
    for device in devices:
        try:
            done = subprocess.run(["nvidia-smi", "-i", device, f"--query-gpu={','.join(fields)}",
                                   "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError, ValueError):  # ValueError: output that is not text
            return None
        lines = done.stdout.strip().splitlines()
        values = [value.strip() for value in lines[0].split(",")] if len(lines) == 1 else []
        if done.returncode != 0 or len(values) != len(fields):
            return None
        answers[device] = values
    return answers
