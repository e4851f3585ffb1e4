#!/usr/bin/env python3
"""Start msckpt from msrun.

msrun runs its task script as `python <task_script> <args>` (unless the script is python,
python3 or pytest), so a worker cannot start the `msckpt` Node.js program directly. Give msrun
this file instead:

    msrun --worker_num=8 --local_worker_num=8 /path/to/msckpt/bin/msckpt.py \
        launch --config run.yaml -- python run_mindformer.py --config {config}

It replaces itself with `node <this folder>/msckpt.js <args>`; the node binary is $MSCKPT_NODE,
else `node` on PATH.
"""
import os
import shutil
import sys

here = os.path.dirname(os.path.realpath(__file__))
node = os.environ.get("MSCKPT_NODE") or shutil.which("node")
if not node:
    sys.stderr.write("msckpt: node (Node.js >= 20.19) not found on PATH; set MSCKPT_NODE to its path\n")
    sys.exit(2)
os.execv(node, [node, os.path.join(here, "msckpt.js")] + sys.argv[1:])
