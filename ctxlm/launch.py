"""`python -m ctxlm.launch N stages.<stage> [args]`: run a stage (a module, or a .py file) in N processes per machine.

N = 1 runs the stage in this process. N > 1 hands it to torchrun (torch.distributed.run) with
`--standalone` (one machine, a free rendezvous port, so that parallel experiments do not collide);
CTXLM_TORCHRUN replaces `--standalone` with other torchrun flags, e.g. for several machines
"--nnodes 2 --node-rank 0 --rdzv-backend c10d --rdzv-endpoint head:29400 --rdzv-id ctxlm"
(docs/distributed.md). When a process fails, torchrun stops the others; this prints one line
naming it, below that process's own error.
"""

from __future__ import annotations

import os
import runpy
import shlex
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit() or int(argv[0]) < 1:
        print("usage: python -m ctxlm.launch PROCESSES MODULE [ARGS...]  (PROCESSES >= 1)", file=sys.stderr)
        return 2
    processes, module, rest = int(argv[0]), argv[1], argv[2:]
    flags = shlex.split(os.environ.get("CTXLM_TORCHRUN", ""))
    script = module.endswith(".py")
    if processes == 1 and not flags:
        sys.argv = [module, *rest]
        if script:
            sys.path.insert(0, os.path.dirname(os.path.abspath(module)))
            runpy.run_path(module, run_name="__main__")
        else:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if "OMP_NUM_THREADS" not in os.environ:  # share the cores instead of torchrun's default of one thread each
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    args = get_args_parser().parse_args([*(flags or ["--standalone"]), f"--nproc-per-node={processes}", *([] if script else ["--module"]), module, *rest])
    try:
        run(args)
    except ChildFailedError as err:
        failed_rank, failure = err.get_first_failure()
        how = f"was killed by signal {-failure.exitcode}" if failure.exitcode < 0 else f"exited with code {failure.exitcode}"
        print(f"ctxlm: {module} stopped: process {failed_rank} (of {processes} per node) {how} (its own error, if any, is above); "
              "the other processes were stopped", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
