"""The Prometheus test server is real: it scrapes, stores, evaluates rules."""
import http.server
import threading

import pytest

from netprobe_testbed.netns import wait_until
from netprobe_testbed.processes import free_port
from netprobe_testbed.prometheus import PrometheusServer

pytestmark = pytest.mark.prometheus


class _Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"# TYPE demo_total counter\ndemo_total{pod=\"a\"} 42\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_scrapes_and_fires_rules():
    port = free_port()
    httpd = http.server.HTTPServer(("127.0.0.1", port), _Metrics)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    scrape = [{"job_name": "t", "scrape_interval": "1s", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]
    rules = [{"name": "t", "rules": [{"alert": "DemoHigh", "expr": "demo_total > 40", "for": "0s"}]}]
    try:
        with PrometheusServer(scrape, rules) as prom:
            res = wait_until(lambda: prom.query('demo_total{pod="a"}'), timeout=30, what="a scraped sample")
            assert float(res[0]["value"][1]) == 42
            firing = wait_until(lambda: [a for a in prom.alerts() if a["state"] == "firing"], timeout=30,
                                what="the alert to fire")
            assert firing[0]["labels"]["alertname"] == "DemoHigh"
            workdir = prom.workdir
        assert not workdir.exists()
    finally:
        httpd.shutdown()
