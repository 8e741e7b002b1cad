#!/usr/bin/env python3
"""GETs a URL and prints one JSON line {"status": code, "type": content_type, "body": text}
({"status": 0, "error": why} if it cannot connect);
with --metrics the body is parsed by the Prometheus client library's OpenMetrics parser
(python3-prometheus-client, the reference implementation) and its Prometheus text-format
parser, and "samples" lists [name, labels, value] of every sample (a parse error fails).

  scrape.py URL [--metrics]
"""
import json
import sys
import urllib.error
import urllib.request


def main(url, metrics):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            status, ctype, body = r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        status, ctype, body = e.code, e.headers.get("Content-Type"), e.read().decode()
    except (urllib.error.URLError, OSError) as e:
        print(json.dumps({"status": 0, "error": str(e)}))
        return 0
    out = {"status": status, "type": ctype, "body": body}
    if metrics:
        from prometheus_client.openmetrics import parser as om
        from prometheus_client import parser as text
        samples = []
        for fam in om.text_string_to_metric_families(body):
            for s in fam.samples:
                samples.append([s.name, s.labels, s.value])
        # The classic text parser (what older scrapers use) reads it too, sample for sample.
        classic = sum(len(f.samples) for f in text.text_string_to_metric_families(body))
        out["samples"] = samples
        out["classic_samples"] = classic
        del out["body"]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], "--metrics" in sys.argv[2:]))
