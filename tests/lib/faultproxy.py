#!/usr/bin/env python3
"""faultproxy.py: an HTTP proxy in front of a real registry that injects faults, for the integration tests.

Every request the rules leave alone is forwarded to the upstream registry and its answer passed back, with
the upstream's Location rewritten to point at the proxy (so the client keeps talking through it). It is a
fault injector, not a registry: anything that succeeds went through to the real one.

    faultproxy.py --listen 127.0.0.1:PORT --upstream http://127.0.0.1:REGPORT --log FILE
                  [--other-listen 127.0.0.2:PORT2] [--plain-listen 127.0.0.3:PORT3]
                  [--tls-cert CERT --tls-key KEY] [--rules JSON-FILE]

--other-listen is "another host": a second listener that forwards the same way (no auth demanded there);
Location rewrites and redirects to "other" point at it.
--tls-cert/--tls-key: the main and the other listener speak https only (the certificate must name both
addresses); the upstream is still plain http.
--plain-listen is a plain-http receiver ("plain"): it forwards like "other" and logs every request it gets,
so a test can prove that a client never followed an https -> http downgrade (redirect "to": "plain",
location "form": "plain").

Control (on the main listener, never forwarded):
    POST /__fault   {"rules": [RULE...], "bearer": false}  replaces the rules, resets counters and the log seq
    GET  /__token   token endpoint for bearer mode: {"token": "tok-<generation>", "expires_in": 300}

In bearer mode every /v2/ request on the main listener must carry "Authorization: Bearer tok-<current
generation>", else 401 with a Bearer challenge whose realm is /__token.

A RULE matches requests by "method" (default any), "path" (a regex searched in path?query, default any),
"listener" ("main"/"other"/"plain", default any); it fires on the "nth" matching request (1-based, default 1) and the
"count" - 1 after it (default 1; 0: every one from nth on). The first rule that fires acts:
    {"action": "status", "status": 503, "headers": {...}, "body": "...", "body_size": N,
     "retry_after_date": SECONDS}                 answer without forwarding (body repeated to body_size bytes;
                                                  Retry-After as an HTTP date SECONDS from now)
    {"action": "reset", "after_bytes": N, "forward_bytes": M}
                                                  read N body bytes, (forward the first M of them upstream, then
                                                  cut that connection), then reset the client connection (RST)
    {"action": "stall", "seconds": S, "where": "before"|"after"|"body"}
                                                  before: never forward, wait, close; after: forward, wait,
                                                  close without answering; body: forward, send the headers and
                                                  half the body, wait, close
    {"action": "drop"}                            forward, then close without answering (answer lost)
    {"action": "delay", "seconds": S, "log": "arrival", "release": true}
                                                  wait, then forward normally; log "arrival": the request is
                                                  logged when it arrives (status "delayed"), so that tests see
                                                  it while it is held (its answer is not logged then);
                                                  release: forwarded at once when the rules are replaced
    {"action": "swallow"}                         do not forward; answer as if it worked (PATCH: 202 with the
                                                  same Location and Range up to the chunk's end; PUT: 201)
    {"action": "location", "form": "absolute"|"path"|"relative"|"other"|"plain"}
                                                  forward, then give the upstream Location in that form
                                                  (plain: on the plain-http listener)
    {"action": "redirect", "to": "other"|"plain"} 307 to the same path on that listener (default other), with
                                                  a fake presigned query (X-Amz-Signature=...)
    {"action": "corrupt", "at": N}                forward with the body byte at N (default: the middle) flipped
    {"action": "mount202"}                        POST ?mount=: forward without the query (a plain new session)
    {"action": "expire_token"}                    bearer mode: a new token generation; 401 invalid_token
Each request is logged as one JSON line: t, seq, conn (the client connection's serial number, from 1: the
requests of one connection come from one client), listener, method, path, auth ("Bearer"/"Basic"/null), token
(generation of a bearer token, or null), content_range, len (body bytes received), rule, action, status
(what the client got: a number, "reset", "closed"), forwarded (body bytes sent upstream), upstream (status).
"""
import argparse
import email.utils
import http.client
import http.server
import json
import re
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.parse

HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
       "proxy-authorization", "proxy-authenticate"}
BODY_MAX = 1 << 30
UPSTREAM_TIMEOUT = 60


class State:
    def __init__(self, args):
        self.lock = threading.Lock()
        self.rules = []
        self.seen = []
        self.bearer = False
        self.changed = threading.Condition(self.lock)
        self.rules_gen = 0
        self.generation = 1
        self.seq = 0
        self.conns = 0
        self.log = open(args.log, "a", buffering=1)
        up = urllib.parse.urlsplit(args.upstream)
        self.upstream = (up.hostname, up.port or 80)
        self.upstream_netloc = up.netloc
        self.main = args.listen
        self.other = args.other_listen
        self.plain = args.plain_listen
        self.tls = bool(args.tls_cert)

    def set_rules(self, spec):
        with self.lock:
            self.rules = list(spec.get("rules", []))
            self.seen = [0] * len(self.rules)
            self.bearer = bool(spec.get("bearer", False))
            self.rules_gen += 1
            self.changed.notify_all()

    def pick(self, listener, method, target):
        with self.lock:
            fired = None
            for i, r in enumerate(self.rules):
                if r.get("method") and r["method"] != method:
                    continue
                if r.get("listener") and r["listener"] != listener:
                    continue
                if r.get("path") and not re.search(r["path"], target):
                    continue
                self.seen[i] += 1
                nth, count = int(r.get("nth", 1)), int(r.get("count", 1))
                if fired is None and self.seen[i] >= nth and (count == 0 or self.seen[i] < nth + count):
                    fired = r
            return fired

    def write(self, entry):
        with self.lock:
            self.seq += 1
            entry["seq"] = self.seq
            entry["t"] = round(time.time(), 3)
            self.log.write(json.dumps({k: v for k, v in entry.items() if k != "logged"}, sort_keys=True) + "\n")


STATE = None


class Closed(Exception):
    """The client connection was reset or closed on purpose: nothing more is written."""


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    listener = "main"

    def log_message(self, fmt, *args):
        pass

    def setup(self):
        super().setup()
        with STATE.lock:
            STATE.conns += 1
            self.conn_id = STATE.conns

    def handle(self):
        try:
            super().handle()
        except (Closed, ConnectionError, BrokenPipeError, socket.timeout, OSError):
            self.close_connection = True

    def __getattr__(self, name):
        if name.startswith("do_"):
            return self.serve
        raise AttributeError(name)

    # ---- helpers ------------------------------------------------------------------------------------------

    def read_body(self, limit=None):
        n = int(self.headers.get("Content-Length") or 0)
        if n > BODY_MAX:
            raise Closed()
        if limit is not None:
            n = min(n, limit)
        data = b""
        while len(data) < n:
            chunk = self.rfile.read(n - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def reset(self):
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        finally:
            raise Closed()

    def close(self):
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raise Closed()

    def reply(self, status, headers=(), body=b"", head_length=None):
        self.send_response_only(status)
        have_len = False
        for k, v in headers:
            if k.lower() == "content-length":
                have_len = True
            self.send_header(k, v)
        if not have_len:
            self.send_header("Content-Length", str(head_length if head_length is not None else len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self.wfile.flush()

    def base(self, which):
        if which == "plain":
            return "http://" + STATE.plain
        return ("https://" if STATE.tls else "http://") + (STATE.main if which == "main" else STATE.other)

    def fwd_headers(self):
        h = {}
        for k, v in self.headers.items():
            if k.lower() in HOP or k.lower() == "host":
                continue
            h[k] = v
        h["Host"] = STATE.upstream_netloc
        return h

    def upstream_open(self):
        return http.client.HTTPConnection(*STATE.upstream, timeout=UPSTREAM_TIMEOUT)

    def forward(self, body, path=None):
        conn = self.upstream_open()
        try:
            conn.request(self.command, path or self.path, body=body if self.command != "HEAD" else None,
                         headers=self.fwd_headers())
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, [(k, v) for k, v in resp.getheaders()], data
        finally:
            conn.close()

    def rewrite_location(self, headers, form=None):
        out = []
        for k, v in headers:
            if k.lower() == "location":
                v = self.location_form(v, form)
            out.append((k, v))
        return out

    def location_form(self, loc, form):
        u = urllib.parse.urlsplit(loc)
        if u.netloc and u.netloc != STATE.upstream_netloc:
            return loc  # somewhere else on purpose
        pq = u.path + ("?" + u.query if u.query else "")
        if form == "path":
            return pq
        if form == "relative":
            req_dir = urllib.parse.urlsplit(self.path).path.rsplit("/", 1)[0] + "/"
            if u.path.startswith(req_dir):
                return u.path[len(req_dir):] + ("?" + u.query if u.query else "")
            return pq
        if form == "other" and STATE.other:
            return self.base("other") + pq
        if form == "plain" and STATE.plain:
            return self.base("plain") + pq
        return self.base(self.listener) + pq

    def pass_back(self, status, headers, data, form=None):
        keep = [(k, v) for k, v in headers if k.lower() not in HOP and k.lower() != "content-length"]
        keep = self.rewrite_location(keep, form)
        head_len = None
        if self.command == "HEAD":
            head_len = next((v for k, v in headers if k.lower() == "content-length"), "0")
        self.reply(status, keep, data, head_length=head_len)

    def bad_gateway(self, entry):
        body = b"<html><body><h1>502 Bad Gateway</h1><p>upstream registry unreachable</p></body></html>"
        entry["status"] = 502
        self.reply(502, [("Content-Type", "text/html")], body)

    # ---- bearer mode --------------------------------------------------------------------------------------

    def token_gen(self):
        a = self.headers.get("Authorization") or ""
        m = re.match(r"Bearer tok-(\d+)$", a)
        return int(m.group(1)) if m else None

    def challenge(self, error=None):
        m = re.match(r"/v2/(.+?)/(blobs|manifests|tags)/", self.path)
        name = m.group(1) if m else "x"
        actions = "pull" if self.command in ("GET", "HEAD") else "pull,push"
        c = 'Bearer realm="%s/__token",service="faultproxy",scope="repository:%s:%s"' % (
            self.base("main"), name, actions)
        if error:
            c += ',error="%s"' % error
        body = json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required",
                                       "detail": None}]}).encode()
        self.reply(401, [("WWW-Authenticate", c), ("Content-Type", "application/json")], body)

    # ---- the request --------------------------------------------------------------------------------------

    def serve(self):
        auth = self.headers.get("Authorization")
        entry = {"conn": self.conn_id, "listener": self.listener, "method": self.command, "path": self.path,
                 "auth": auth.split(" ", 1)[0] if auth else None, "token": self.token_gen(),
                 "content_range": self.headers.get("Content-Range"), "rule": None, "action": None,
                 "forwarded": 0, "upstream": None, "status": None}
        try:
            self.dispatch(entry)
        except Closed:
            if entry["status"] is None:
                entry["status"] = "closed"
            raise
        finally:
            self.log_entry(entry)

    def log_entry(self, entry):
        """written once: before a stall (so that tests see it while it lasts), else at the end"""
        if not entry.get("logged"):
            entry["logged"] = True
            STATE.write(entry)

    def control(self, entry):
        if self.path.startswith("/__fault") and self.command == "POST":
            STATE.set_rules(json.loads(self.read_body() or b"{}"))
            entry["status"] = 200
            self.reply(200, [("Content-Type", "application/json")], b"{}")
            return True
        if self.path.startswith("/__token"):
            self.read_body()
            body = json.dumps({"token": "tok-%d" % STATE.generation, "expires_in": 300}).encode()
            entry["status"] = 200
            self.reply(200, [("Content-Type", "application/json")], body)
            return True
        return False

    def dispatch(self, entry):
        if self.listener == "main" and self.path.startswith("/__") and self.control(entry):
            return
        # auth first, as a registry does: a refused request does not count for the rules
        if STATE.bearer and self.listener == "main" and self.path.startswith("/v2/") \
                and self.token_gen() != STATE.generation:
            self.read_body()
            entry["status"] = 401
            return self.challenge("invalid_token" if self.token_gen() else None)
        rule = STATE.pick(self.listener, self.command, self.path)
        action = rule.get("action") if rule else None
        entry["rule"], entry["action"] = (rule.get("id") if rule else None), action
        if action == "reset":
            self.act_reset(rule, entry)
        if action == "expire_token":
            with STATE.lock:
                STATE.generation += 1
            self.read_body()
            entry["status"] = 401
            return self.challenge("invalid_token")
        if action == "redirect":
            self.read_body()
            sep = "&" if "?" in self.path else "?"
            loc = self.base(rule.get("to", "other")) + self.path + sep + "X-Amz-Signature=presigned-secret"
            entry["status"] = 307
            return self.reply(307, [("Location", loc)])
        body = self.read_body()
        entry["len"] = len(body)
        handler = ACTIONS.get(action, Handler.act_forward)
        handler(self, rule or {}, body, entry)

    # ---- actions ------------------------------------------------------------------------------------------

    def act_reset(self, rule, entry):
        data = self.read_body(int(rule.get("after_bytes", 0)))
        entry["len"] = len(data)
        fb = rule.get("forward_bytes")
        if fb is not None:
            conn = self.upstream_open()
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in self.fwd_headers().items():
                    conn.putheader(k, v)
                conn.endheaders()
                conn.send(data[:int(fb)])
                entry["forwarded"] = len(data[:int(fb)])
                time.sleep(0.2)  # let the registry read what it got before it sees the cut
            except OSError:
                pass
            finally:
                try:
                    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except (OSError, AttributeError):
                    pass
                conn.close()
        entry["status"] = "reset"
        self.reset()

    def act_status(self, rule, body, entry):
        headers = list((rule.get("headers") or {}).items())
        if rule.get("retry_after_date") is not None:
            headers.append(("Retry-After", email.utils.formatdate(time.time() + float(rule["retry_after_date"]),
                                                                   usegmt=True)))
        data = (rule.get("body") or "").encode()
        size = int(rule.get("body_size", 0))
        if size and data:
            data = (data * (size // len(data) + 1))[:size]
        entry["status"] = int(rule.get("status", 500))
        self.reply(entry["status"], headers, data)

    def act_forward(self, rule, body, entry, form=None):
        try:
            status, headers, data = self.forward(body)
        except OSError:
            return self.bad_gateway(entry)
        entry["forwarded"], entry["upstream"], entry["status"] = len(body), status, status
        self.pass_back(status, headers, data, form)

    def act_stall(self, rule, body, entry):
        where, secs = rule.get("where", "before"), float(rule.get("seconds", 30))
        if where == "before":
            entry["status"] = "stalled"
            self.log_entry(entry)
            time.sleep(secs)
            return self.close()
        try:
            status, headers, data = self.forward(body)
        except OSError:
            return self.bad_gateway(entry)
        entry["forwarded"], entry["upstream"] = len(body), status
        if where == "after":
            entry["status"] = "stalled"
            self.log_entry(entry)
            time.sleep(secs)
            return self.close()
        keep = [(k, v) for k, v in headers if k.lower() not in HOP and k.lower() != "content-length"]
        self.send_response_only(status)
        for k, v in self.rewrite_location(keep):
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:len(data) // 2])
        self.wfile.flush()
        entry["status"] = "stalled-body"
        self.log_entry(entry)
        time.sleep(secs)
        self.close()

    def act_drop(self, rule, body, entry):
        try:
            status, _, _ = self.forward(body)
        except OSError:
            return self.bad_gateway(entry)
        entry["forwarded"], entry["upstream"] = len(body), status
        self.reset()

    def act_delay(self, rule, body, entry):
        secs = float(rule.get("seconds", 1))
        if rule.get("log") == "arrival":
            entry["status"] = "delayed"
            self.log_entry(entry)
        if rule.get("release"):
            with STATE.lock:
                gen = STATE.rules_gen
                STATE.changed.wait_for(lambda: STATE.rules_gen != gen, timeout=secs)
        else:
            time.sleep(secs)
        self.act_forward(rule, body, entry)

    def act_swallow(self, rule, body, entry):
        url = self.base(self.listener) + self.path
        if self.command == "PATCH":
            m = re.match(r"(\d+)-(\d+)", self.headers.get("Content-Range") or "")
            end = int(m.group(2)) if m else len(body) - 1
            entry["status"] = 202
            return self.reply(202, [("Location", url), ("Range", "0-%d" % end)])
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        digest = (q.get("digest") or [""])[0]
        entry["status"] = 201
        self.reply(201, [("Location", url), ("Docker-Content-Digest", digest)])

    def act_location(self, rule, body, entry):
        self.act_forward(rule, body, entry, form=rule.get("form", "absolute"))

    def act_corrupt(self, rule, body, entry):
        if body:
            at = int(rule.get("at", len(body) // 2)) % len(body)
            body = body[:at] + bytes([body[at] ^ 0xFF]) + body[at + 1:]
        self.act_forward(rule, body, entry)

    def act_mount202(self, rule, body, entry):
        path = urllib.parse.urlsplit(self.path).path
        try:
            status, headers, data = self.forward(body, path=path)
        except OSError:
            return self.bad_gateway(entry)
        entry["forwarded"], entry["upstream"], entry["status"] = len(body), status, status
        self.pass_back(status, headers, data)


ACTIONS = {
    "status": Handler.act_status,
    "stall": Handler.act_stall,
    "drop": Handler.act_drop,
    "delay": Handler.act_delay,
    "swallow": Handler.act_swallow,
    "location": Handler.act_location,
    "corrupt": Handler.act_corrupt,
    "mount202": Handler.act_mount202,
}


class OtherHandler(Handler):
    listener = "other"

    def serve(self):
        # a fake presigned query is not the registry's business
        u = urllib.parse.urlsplit(self.path)
        q = [(k, v) for k, v in urllib.parse.parse_qsl(u.query, keep_blank_values=True)
             if not k.startswith("X-Amz-")]
        self.path = u.path + ("?" + urllib.parse.urlencode(q) if q else "")
        super().serve()


class PlainHandler(OtherHandler):
    listener = "plain"


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    tls = None  # an ssl.SSLContext: the handshake runs on the connection's own thread

    def finish_request(self, request, client_address):
        if not self.tls:
            return super().finish_request(request, client_address)
        try:
            request.settimeout(UPSTREAM_TIMEOUT)
            conn = self.tls.wrap_socket(request, server_side=True)
            conn.settimeout(None)
        except (ssl.SSLError, OSError):
            return
        try:
            super().finish_request(conn, client_address)
        finally:
            conn.close()

    def handle_error(self, request, client_address):
        pass


def listen(addr, handler, tls=None):
    host, port = addr.rsplit(":", 1)
    srv = Server((host, int(port)), handler)
    srv.tls = tls
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    return srv


def main():
    global STATE
    p = argparse.ArgumentParser(description="HTTP fault-injecting proxy in front of a registry (tests only)")
    p.add_argument("--listen", required=True, help="127.0.0.1:PORT")
    p.add_argument("--other-listen", help="another loopback host:port, e.g. 127.0.0.2:PORT")
    p.add_argument("--upstream", required=True, help="http://127.0.0.1:REGPORT")
    p.add_argument("--log", required=True)
    p.add_argument("--plain-listen", help="a plain-http receiver, e.g. 127.0.0.3:PORT3")
    p.add_argument("--tls-cert", help="PEM certificate: the main and other listeners speak https")
    p.add_argument("--tls-key", help="PEM key of --tls-cert")
    p.add_argument("--rules", help="JSON file: {\"rules\": [...], \"bearer\": false}")
    args = p.parse_args()
    for a in (args.listen, args.other_listen, args.plain_listen):
        if a and not a.startswith("127."):
            sys.exit("faultproxy: listen only on 127.0.0.0/8, not %s" % a)
    if bool(args.tls_cert) != bool(args.tls_key):
        sys.exit("faultproxy: --tls-cert and --tls-key go together")
    tls = None
    if args.tls_cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    STATE = State(args)
    if args.rules:
        with open(args.rules) as f:
            STATE.set_rules(json.load(f))
    listen(args.listen, Handler, tls)
    if args.other_listen:
        listen(args.other_listen, OtherHandler, tls)
    if args.plain_listen:
        listen(args.plain_listen, PlainHandler)
    print("faultproxy: listening on %s%s%s%s -> %s" % (
          "https://" if tls else "", args.listen, (" and " + args.other_listen) if args.other_listen else "",
          (" and plain http " + args.plain_listen) if args.plain_listen else "", args.upstream),
          file=sys.stderr, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
