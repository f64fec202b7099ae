#!/usr/bin/env python3
"""Figures of a fleet run from the nginx access log of tests/lib/fleet-registry.sh (stdlib only).

usage: fleetlog.py --log ACCESS_LOG --base BASE_DIGESTS --base-repo REPO --images IMAGES_TSV [--json OUT]

ACCESS_LOG   the saves' part of the access log (TAB-separated, columns in tests/lib/fleet-registry.sh)
BASE_DIGESTS the base image's layer digests, one a line
REPO         the base image's repository (every client reads it: its URIs tell no client apart)
IMAGES_TSV   REPOSITORY<TAB>MANIFEST_FILE per saved image (the manifest as the registry serves it)

Figures (printed, and written as JSON to OUT):
  requests, status counts, n429, n5xx (answers >= 500, e.g. nginx's 502 for a request cut by a dead replica)
  retried: answers 429 or >= 500 (each made its client send again: every save ended ACTIVE)
  returns: for each 429 on a URI of a notebook's own repository (not the base's), the next request with the same
           method and URI (the same client coming back): its delay after the 429 and its arrival time
  delay_ms_min/median/max, delay_buckets (100 ms buckets of the delays), arrival_buckets_max_share (the largest
           share of the returns that arrived within one 100 ms window of the run), arrival_buckets_used
  sent_bytes: body bytes of every POST/PATCH/PUT as nginx read them (min(Content-Length, request_length),
           request_length alone when chunked, headers included then: an upper bound), resends included
  new_bytes: the blobs that are new in the images: each image's layers that are not base layers, its config
           and its manifest (distinct digests counted once)
  ratio: sent_bytes / new_bytes
  base_uploads: requests that uploaded a base layer: PUT/POST ?digest=<base>, or POST ?mount=<base> that the
           registry declined (202: an upload session opened instead of the mount)
  base_mounts (201), base_heads (HEAD of a base blob, any answer)
  cut_sessions: the upload sessions (UUIDs) of PATCHes answered >= 500: cut by a dying replica (see below)
  images_ok / images_bad: each image = the base layers (same digests, same order) + exactly one own layer,
           and no two images share their own layer
"""

import argparse
import json
import re
import statistics
import sys
import urllib.parse


def parse_log(path):
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) < 10:
                continue
            try:
                end = float(p[0])
                rt = float(p[9]) if p[9] != "-" else 0.0
            except ValueError:
                continue
            rows.append({
                "end": end, "start": end - rt, "status": int(p[1]) if p[1].isdigit() else 0,
                "method": p[2], "uri": p[3],
                "req_len": int(p[4]) if p[4].isdigit() else 0,
                "clen": int(p[5]) if p[5].isdigit() else None,
            })
    rows.sort(key=lambda r: r["start"])
    return rows


def query(uri):
    q = uri.split("?", 1)[1] if "?" in uri else ""
    return urllib.parse.parse_qs(q)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--base-repo", required=True)
    ap.add_argument("--json")
    a = ap.parse_args()

    rows = parse_log(a.log)
    base = [l.strip() for l in open(a.base) if l.strip()]
    baseset = set(base)
    fig = {"requests": len(rows)}
    status = {}
    for r in rows:
        status[str(r["status"])] = status.get(str(r["status"]), 0) + 1
    fig["status"] = dict(sorted(status.items()))
    fig["n429"] = sum(1 for r in rows if r["status"] == 429)
    fig["n5xx"] = sum(1 for r in rows if r["status"] >= 500)
    fig["retried"] = fig["n429"] + fig["n5xx"]

    # returns after a 429: the next request with the same method and URI, for the URIs of one client only (every
    # client reads the base: another client's GET of it is no return)
    shared = f"/v2/{a.base_repo}/"
    delays, arrivals = [], []
    for i, r in enumerate(rows):
        if r["status"] != 429 or r["uri"].startswith(shared):
            continue
        for s in rows[i + 1:]:
            if s["method"] == r["method"] and s["uri"] == r["uri"] and s["start"] > r["start"]:
                delays.append((s["start"] - r["start"]) * 1000.0)
                arrivals.append(s["start"])
                break
    fig["returns"] = len(delays)
    buckets = {}
    for d in delays:
        b = int(d // 100) * 100
        buckets[b] = buckets.get(b, 0) + 1
    fig["delay_buckets"] = {str(k): v for k, v in sorted(buckets.items())}
    if delays:
        fig["delay_ms_min"] = round(min(delays))
        fig["delay_ms_median"] = round(statistics.median(delays))
        fig["delay_ms_max"] = round(max(delays))
        fig["delay_ms_stdev"] = round(statistics.pstdev(delays))
        t0 = rows[0]["start"]
        abuckets = {}
        for t in arrivals:
            b = int((t - t0) * 10)
            abuckets[b] = abuckets.get(b, 0) + 1
        fig["arrival_buckets_used"] = len(abuckets)
        fig["arrival_buckets_max_share"] = round(max(abuckets.values()) / len(arrivals), 3)
        fig["arrival_buckets"] = {f"{k / 10:.1f}": v for k, v in sorted(abuckets.items())}

    # bytes sent in request bodies
    sent = 0
    for r in rows:
        if r["method"] in ("POST", "PATCH", "PUT"):
            sent += min(r["clen"], r["req_len"]) if r["clen"] is not None else r["req_len"]
    fig["sent_bytes"] = sent

    # the images and their new blobs
    new = {}
    own_layers = {}
    bad = []
    n_images = 0
    for line in open(a.images):
        if not line.strip():
            continue
        repo, path = line.rstrip("\n").split("\t")
        n_images += 1
        raw = open(path, "rb").read()
        m = json.loads(raw)
        layers = [l["digest"] for l in m["layers"]]
        if layers[:len(base)] != base or len(layers) != len(base) + 1:
            bad.append(f"{repo}: layers {layers}")
        for l in m["layers"]:
            if l["digest"] not in baseset:
                new[l["digest"]] = l["size"]
                own_layers.setdefault(l["digest"], []).append(repo)
        new[m["config"]["digest"]] = m["config"]["size"]
        new["manifest:" + repo] = len(raw)
    for d, repos in own_layers.items():
        if len(repos) > 1:
            bad.append(f"layer {d} shared by {repos}")
    fig["images"] = n_images
    fig["images_bad"] = bad
    fig["images_ok"] = n_images - len([b for b in bad if not b.startswith("layer ")])
    fig["new_bytes"] = sum(new.values())
    fig["ratio"] = round(sent / fig["new_bytes"], 4) if fig["new_bytes"] else None

    # base layers: never uploaded
    ups, mounts, heads = [], 0, 0
    for r in rows:
        q = query(r["uri"])
        path = r["uri"].split("?", 1)[0]
        dig = q.get("digest", [None])[0]
        mnt = q.get("mount", [None])[0]
        if r["method"] in ("PUT", "POST") and dig in baseset:
            ups.append(f'{r["method"]} {r["uri"]} {r["status"]}')
        if r["method"] == "POST" and mnt in baseset:
            if r["status"] == 202:
                ups.append(f'declined mount {r["uri"]}')
            elif r["status"] == 201:
                mounts += 1
        if r["method"] == "HEAD" and re.search(r"/blobs/(sha256:[0-9a-f]{64})$", path) and \
                path.rsplit("/", 1)[1] in baseset:
            heads += 1
    # sessions cut by a dying replica: a PATCH answered >= 500 (nginx's 502) may have left bytes that the
    # session's signed _state does not count; distribution then refuses that session for GET, PATCH and DELETE
    # ("upload resumed at wrong offset"): the client must open a new one, and cannot delete the old one
    cut = set()
    for r in rows:
        m = re.search(r"/blobs/uploads/([0-9a-f-]{36})", r["uri"])
        if m and r["method"] == "PATCH" and r["status"] >= 500:
            cut.add(m.group(1))
    fig["cut_sessions"] = sorted(cut)
    fig["base_uploads"] = ups
    fig["base_mounts"] = mounts
    fig["base_heads"] = heads

    if a.json:
        with open(a.json, "w") as f:
            json.dump(fig, f, indent=1)
    w = sys.stderr
    print(f"fleetlog: {fig['requests']} requests, status {fig['status']}", file=w)
    print(f"fleetlog: sent {sent} body bytes for {fig['new_bytes']} new bytes: ratio {fig['ratio']}", file=w)
    print(f"fleetlog: base layers: {mounts} mounted (201), {heads} HEADs, {len(ups)} uploads", file=w)
    if delays:
        print(f"fleetlog: {len(delays)} returns after a 429: delay min {fig['delay_ms_min']} ms, median "
              f"{fig['delay_ms_median']} ms, max {fig['delay_ms_max']} ms, stdev {fig['delay_ms_stdev']} ms; "
              f"they arrived over {fig['arrival_buckets_used']} windows of 100 ms, at most "
              f"{fig['arrival_buckets_max_share'] * 100:.1f} % in one", file=w)
        print("fleetlog: delay after the 429 (100 ms buckets):", file=w)
        top = max(buckets.values())
        for k, v in sorted(buckets.items()):
            print(f"  {k:5d}-{k + 99:<5d} ms {v:5d} {'#' * max(1, round(v * 50 / top))}", file=w)
    return 0


if __name__ == "__main__":
    sys.exit(main())
