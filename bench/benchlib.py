"""What the benchmark scripts share: where the binary is, free ports, a JSON HTTP client and
the demo image (built from Debian's static busybox when missing: there is no registry)."""
import json, os, shutil, socket, ssl, subprocess, tempfile, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUBE = os.environ.get("CUBE_BIN", os.path.join(ROOT, "target", "release", "cube"))
IMAGE = "cube-demo/busybox:latest"


def sh(*cmd, check=True):
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(method, url, body=None, timeout=120):
    """A JSON request; presents $CUBE_TOKEN as a bearer token when it is set."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if os.environ.get("CUBE_TOKEN"):
        headers["Authorization"] = "Bearer " + os.environ["CUBE_TOKEN"]
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    # An https:// manager is trusted through $CUBE_CA_CERT, as the CLI does.
    context = ssl.create_default_context(cafile=os.environ["CUBE_CA_CERT"]) if url.startswith("https") else None
    with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
        return r.status, json.loads(r.read() or b"null")


def http(method, url, body=None, timeout=120):
    return http_status(method, url, body, timeout)[1]


def http_all(url, timeout=120):
    """Every page of a listing (GET /tasks): each answer's Link header names the next."""
    items = []
    origin = url.split("/", 3)[:3]
    sep = "&" if "?" in url else "?"
    next_url = f"{url}{sep}limit=5000"
    while next_url:
        headers = {}
        if os.environ.get("CUBE_TOKEN"):
            headers["Authorization"] = "Bearer " + os.environ["CUBE_TOKEN"]
        context = ssl.create_default_context(cafile=os.environ["CUBE_CA_CERT"]) if url.startswith("https") else None
        req = urllib.request.Request(next_url, headers=headers)
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            items.extend(json.loads(r.read()))
            link = r.headers.get("Link", "")
        target = link.split(">", 1)[0].lstrip("<") if 'rel="next"' in link else ""
        next_url = "/".join(origin) + target if target.startswith("/") else None
    return items


def remove_by_label(label):
    ids = sh("docker", "ps", "-aq", "--filter", f"label={label}").stdout.split()
    if ids:
        sh("docker", "rm", "-f", *ids, check=False)


def ensure_image():
    if sh("docker", "image", "inspect", IMAGE, check=False).returncode == 0:
        return
    d = tempfile.mkdtemp()
    shutil.copy("/bin/busybox", d)
    with open(os.path.join(d, "Dockerfile"), "w") as f:
        f.write('FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
                'CMD ["httpd", "-f", "-p", "8080"]\n')
    subprocess.run(["docker", "build", "-q", "-t", IMAGE, d], check=True, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    shutil.rmtree(d, ignore_errors=True)
