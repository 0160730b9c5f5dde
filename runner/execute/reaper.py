"""A local Ray must not outlive robustgrid: after a kill -9, Ray's DashboardAgent and RuntimeEnvAgent
stay alive (reparented to init, ignoring SIGTERM) although their raylet is gone. A small watchdog,
started just before the private local Ray, follows the Ray processes under the robustgrid process
and kills what is left of them once that process has ended (processes Ray started less than
half a second before the kill can escape it)."""
from __future__ import annotations

import os
import subprocess
import sys

WATCHDOG = r"""
import os, sys, time
import psutil
me = os.getpid()                     # a child of robustgrid too, named with Ray's folder: not to be killed
parent = psutil.Process(int(sys.argv[1]))
started, ray_dir = float(sys.argv[2]), sys.argv[3]

def is_ray(p):
    try:
        return p.name().startswith("ray::") or any(ray_dir in part for part in p.cmdline())
    except psutil.Error:
        return False

known = {}
while True:
    try:
        alive = parent.create_time() == started and parent.status() != psutil.STATUS_ZOMBIE
        if alive:
            known.update({p.pid: p for p in parent.children(recursive=True) if p.pid != me and is_ray(p)})
    except psutil.Error:
        alive = False
    if not alive:
        break
    time.sleep(0.5)
time.sleep(3.0)                      # a clean exit shuts Ray down itself; leave it the time to
for p in known.values():
    try:
        if p.is_running():           # psutil checks the creation time: never a reused pid
            p.kill()
    except psutil.Error:
        pass
"""


def reap_local_ray_on_exit() -> subprocess.Popen:
    """Start the watchdog over this process's Ray children (call it before ray.init starts them)."""
    import psutil
    import ray
    me = psutil.Process()
    return subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), str(me.create_time()),
                             os.path.dirname(ray.__file__)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
