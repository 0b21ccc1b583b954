"""netprobe benchmarks: what the agent costs, measured side by side on this machine.

`make bench` (= `python -m bench` from the repository root) runs, each in its own
lab of network-namespace pods and with its own agent process:

    kernel_cost      ns per event of every BPF program above an empty program on
                     its hook (the kernel's BPF run-time stats)
    veth_overhead    TCP stream throughput (iperf3) and request/response rate
                     (sockperf ping-pong): the default program set and each
                     program alone against empty programs on the same hooks
    agent_resources  agent RSS after start, at steady state and at its peak;
                     agent CPU time at a low and a high packet rate
    metrics_render   time to GET /metrics at about 1,000 and 10,000 series

Figures come from one run, medians of --reps repetitions, and are printed next
to their targets; nothing here asserts a timing (that is what tests must not
do on a shared machine).
"""
