"""The demo's arithmetic on the agent's exposition: quantiles and per-pod sums."""
import math

import pytest

from netprobe_testbed.demo import free_listen_address, histogram_quantile, parse_listen, summarize

EXPOSITION = """\
# HELP netprobe_tcp_connections_opened_total TCP connections opened.
# TYPE netprobe_tcp_connections_opened_total counter
netprobe_tcp_connections_opened_total{namespace="shop",pod="web-1",peer_namespace="shop",peer_pod="cart-7",direction="outbound"} 7
netprobe_tcp_connections_opened_total{namespace="shop",pod="web-1",peer_namespace="tools",peer_pod="loadgen-1",direction="inbound"} 100
netprobe_tcp_connections_opened_total{namespace="shop",pod="web-1",peer_namespace="payments",peer_pod="api-2",direction="outbound"} 3
# HELP netprobe_tcp_retransmits_total Retransmitted TCP segments.
# TYPE netprobe_tcp_retransmits_total counter
netprobe_tcp_retransmits_total{namespace="shop",pod="cart-7",peer_namespace="payments",peer_pod="ledger-4"} 12
# HELP netprobe_tcp_segments_sent_total TCP segments sent.
# TYPE netprobe_tcp_segments_sent_total counter
netprobe_tcp_segments_sent_total{namespace="shop",pod="cart-7",peer_namespace="payments",peer_pod="ledger-4"} 400
netprobe_tcp_segments_sent_total{namespace="shop",pod="cart-7",peer_namespace="shop",peer_pod="web-1"} 200
# HELP netprobe_tcp_rtt_seconds Smoothed RTT.
# TYPE netprobe_tcp_rtt_seconds histogram
netprobe_tcp_rtt_seconds_bucket{namespace="shop",pod="web-1",peer_pod="cart-7",le="1e-05"} 0
netprobe_tcp_rtt_seconds_bucket{namespace="shop",pod="web-1",peer_pod="cart-7",le="2e-05"} 10
netprobe_tcp_rtt_seconds_bucket{namespace="shop",pod="web-1",peer_pod="cart-7",le="4e-05"} 20
netprobe_tcp_rtt_seconds_bucket{namespace="shop",pod="web-1",peer_pod="cart-7",le="+Inf"} 20
netprobe_tcp_rtt_seconds_count{namespace="shop",pod="web-1",peer_pod="cart-7"} 20
netprobe_tcp_rtt_seconds_sum{namespace="shop",pod="web-1",peer_pod="cart-7"} 0.0005
netprobe_tcp_rtt_seconds_bucket{namespace="shop",pod="web-1",peer_pod="api-2",le="1e-05"} 0
netprobe_tcp_rtt_seconds_bucket{namespace="shop",pod="web-1",peer_pod="api-2",le="2e-05"} 0
netprobe_tcp_rtt_seconds_bucket{namespace="shop",pod="web-1",peer_pod="api-2",le="4e-05"} 20
netprobe_tcp_rtt_seconds_bucket{namespace="shop",pod="web-1",peer_pod="api-2",le="+Inf"} 20
netprobe_tcp_rtt_seconds_count{namespace="shop",pod="web-1",peer_pod="api-2"} 20
netprobe_tcp_rtt_seconds_sum{namespace="shop",pod="web-1",peer_pod="api-2"} 0.0006
# HELP netprobe_program_info Loaded programs.
# TYPE netprobe_program_info gauge
netprobe_program_info{program="tcp_rtt",attach="tracepoint"} 1
"""


def test_quantile_interpolates_inside_the_bucket_like_promql():
    buckets = [(1.0, 10), (2.0, 30), (4.0, 40), (math.inf, 40)]
    assert histogram_quantile(0.25, buckets) == pytest.approx(1.0)   # rank 10: top of bucket 1
    assert histogram_quantile(0.5, buckets) == pytest.approx(1.5)    # rank 20: half way into (1, 2]
    assert histogram_quantile(0.9, buckets) == pytest.approx(3.2)    # rank 36: 6/10 into (2, 4]
    assert histogram_quantile(0.1, buckets) == pytest.approx(0.4)    # first bucket starts at 0


def test_quantile_in_the_inf_bucket_is_the_highest_finite_bound():
    assert histogram_quantile(0.99, [(1.0, 1), (2.0, 2), (math.inf, 10)]) == 2.0


def test_quantile_of_an_empty_histogram_is_none_and_q_is_checked():
    assert histogram_quantile(0.5, [(1.0, 0), (math.inf, 0)]) is None
    assert histogram_quantile(0.5, []) is None
    with pytest.raises(ValueError):
        histogram_quantile(1.5, [(1.0, 1)])


def test_summary_sums_over_peers_and_splits_direction():
    pods = summarize(EXPOSITION)
    web = pods[("shop", "web-1")]
    assert (web.opened_out, web.opened_in, web.opened) == (10, 100, 110)
    assert pods[("shop", "cart-7")].retransmits == 12
    assert pods[("shop", "cart-7")].retransmit_percent == 2.0   # 12 of 600 segments
    assert web.retransmit_percent is None                       # no segment counts: no ratio
    assert web.retransmits == 0
    # two peers' histograms add up bucket by bucket: 10 in (10, 20] µs, 30 in (20, 40] µs
    assert web.rtt_buckets == {1e-05: 0, 2e-05: 10, 4e-05: 40, math.inf: 40}
    assert web.rtt(0.5) == pytest.approx(2e-05 + 2e-05 * (20 - 10) / 30)
    assert ("", "tcp_rtt") not in pods  # series without a pod label are not pods


def test_listen_address_is_validated_and_a_taken_port_is_replaced():
    assert parse_listen("[::1]:9435") == ("::1", 9435)
    for bad in ("9435", "localhost", "host:port", "1.2.3.4:70000"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_listen(bad)
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        address, changed = free_listen_address(f"127.0.0.1:{port}")
        assert changed and address != f"127.0.0.1:{port}" and address.startswith("127.0.0.1:")
