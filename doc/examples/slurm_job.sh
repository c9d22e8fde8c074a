#!/bin/bash
# srpy engines under Slurm, found through a name server (doc/cluster.md, "Under Slurm, and in containers").
#
#   sbatch doc/examples/slurm_job.sh          # on a Slurm cluster: every node of the allocation
#   bash doc/examples/slurm_job.sh            # anywhere else: the same steps on this one machine
#
# Steps: (1) the first node's task serves the name server and its engines (srpyapp --start-ns);
# (2) once the name server answers, every other node's task starts its engines, registered
# there (srpyapp --ns --ns-host FIRST_NODE); (3) the client finds them all in the name server
# (EngBox.discover), maps, introduces them to each other and runs a spawn job across them;
# (4) the engines are stopped. Without SLURM_JOB_ID (no Slurm), step 1 and step 2 each run one
# launcher on this machine, on loopback: the same commands, with "this machine" for every node.
#
# Settings (environment): SRPYAPP (the launcher command, default "srpyapp"), PYTHON (default
# python3), SRPY_NS_PORT (default 9090), SRPY_SECRET (default: a fresh random one; srun hands the
# environment to every task, so it never appears on a command line), ENGINES_PER_NODE (default:
# SLURM_CPUS_PER_TASK, else 2), SRPY_GROUP (default: job-$SLURM_JOB_ID).
#
#SBATCH --job-name=srpy
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=00:20:00

set -euo pipefail

read -r -a SRPYAPP <<< "${SRPYAPP:-srpyapp}"
PYTHON=${PYTHON:-python3}
NS_PORT=${SRPY_NS_PORT:-9090}
SRPY_SECRET=${SRPY_SECRET:-$("$PYTHON" -c 'import secrets; print(secrets.token_hex(16))')}
export SRPY_SECRET
PER_NODE=${ENGINES_PER_NODE:-${SLURM_CPUS_PER_TASK:-2}}
GROUP=${SRPY_GROUP:-"job-${SLURM_JOB_ID:-local-$$}"}
LOGS=$(mktemp -d "${TMPDIR:-/tmp}/srpy-job.XXXXXX")

if [ -n "${SLURM_JOB_ID:-}" ]; then
    mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
    NS_HOST=${NODES[0]}
    OTHERS=$(( ${#NODES[@]} - 1 ))
    # one task on one node; the task listens on its node's own name (what the other nodes reach)
    # (exec: the background job's PID is srun's own, which the end of this script signals)
    on_first() { exec srun --nodes=1 --ntasks=1 --nodelist="$NS_HOST" "$@"; }
    on_others() { exec srun --nodes="$OTHERS" --ntasks-per-node=1 --exclude="$NS_HOST" "$@"; }
    HOST_OF_TASK='$(hostname)'
else
    echo "no Slurm here (SLURM_JOB_ID unset): running every step on this machine, on loopback"
    NODES=(this-machine this-machine-again)
    NS_HOST=127.0.0.1
    OTHERS=1
    on_first() { exec "$@"; }
    on_others() { exec "$@"; }
    HOST_OF_TASK=127.0.0.1
fi
EXPECTED=$(( (OTHERS + 1) * PER_NODE ))

STARTED=()
stop_engines() {
    # srun passes SIGTERM on to its tasks; each launcher stops its engines and removes their sandboxes
    for pid in "${STARTED[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${STARTED[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_engines EXIT

# (1) the name server and the first node's engines
on_first "${SRPYAPP[@]}" --start-ns --host "$NS_HOST" --ns-port "$NS_PORT" -n "$PER_NODE" \
    --group "$GROUP" > "$LOGS/first.out" 2> "$LOGS/first.err" &
STARTED+=($!)

# ... wait until it answers (up to 60 s), before the other nodes register there
"$PYTHON" - "$NS_HOST" "$NS_PORT" <<'EOF'
import sys, time
from Pyro5.api import locate_ns
from Pyro5.errors import NamingError
deadline = time.monotonic() + 60
while True:
    try:
        locate_ns(sys.argv[1], int(sys.argv[2]))
        break
    except NamingError:
        if time.monotonic() > deadline:
            sys.exit("no name server at %s:%s within 60 s" % (sys.argv[1], sys.argv[2]))
        time.sleep(0.5)
EOF

# (2) every other node's engines, registered in that name server
if [ "$OTHERS" -gt 0 ]; then
    on_others bash -c "exec \"\$@\" --host \"$HOST_OF_TASK\"" srpy-task "${SRPYAPP[@]}" --ns \
        --ns-host "$NS_HOST" --ns-port "$NS_PORT" -n "$PER_NODE" --group "$GROUP" \
        > "$LOGS/others.out" 2> "$LOGS/others.err" &
    STARTED+=($!)
fi

# (3) the client: every engine of the job's group, from the name server
"$PYTHON" - "$NS_HOST" "$NS_PORT" "$GROUP" "$EXPECTED" <<'EOF'
import sys, time
import srpy

ns_host, ns_port, group, expected = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
deadline = time.monotonic() + 120
while True:  # the other nodes' engines register as they come up
    box = srpy.EngBox.discover(group=group, ns_host=ns_host, ns_port=ns_port)
    if len(box) >= expected or time.monotonic() > deadline:
        break
    box.close()
    time.sleep(1)
try:
    if len(box) < expected:
        sys.exit("only %d of %d engines registered within 120 s" % (len(box), expected))
    print("engines: %d on %s" % (len(box), ", ".join(sorted({e.info.get("Hostname", "?") for e in box}))))
    print("map: sum of squares below 10,000 =", sum(box.map(pow, range(10_000), [2] * 10_000)))
    box.connectPeers()
    box[0].exe('''
import srpy

def tree_sum(lo, hi):
    if hi - lo <= 100_000:
        return sum(range(lo, hi)), {srpy.this_engine().name}
    mid = (lo + hi) // 2
    left, right = srpy.spawn(tree_sum, lo, mid), srpy.spawn(tree_sum, mid, hi)
    (a, where_a), (b, where_b) = left.result(), right.result()
    return a + b, where_a | where_b
''')
    total, where = box[0].eval("tree_sum(0, 10_000_000)")
    assert total == sum(range(10_000_000))
    print("spawn: a tree sum over 100 leaves ran on %d engines" % len(where))
finally:
    box.close()
EOF

# (4) the trap stops the engines
echo "done; launcher logs in $LOGS"
