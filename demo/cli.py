"""``flask demo``: a fake two-node Proxmox cluster (fakepve, run as a separate process), registered with a
server, IP pools and a product, and a first CreateAccount sent through the signed bridge, so a new user
watches a deploy run end to end without owning a cluster."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import click
import requests
from flask import current_app
from flask.cli import with_appcontext

DEMO_SERVER_ID = 1
DEMO_PRODUCT_ID = 1


def start_cluster(time_scale: float, pki_dir: Path) -> tuple[subprocess.Popen, dict]:
    """Start ``python -m demo.pve_cluster`` and read the JSON line it prints (url, token, CA file)."""
    pki_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "demo.pve_cluster", "--port", "0", "--time-scale",
                             str(time_scale), "--pki-dir", str(pki_dir)],
                            stdout=subprocess.PIPE, text=True, cwd=str(Path(__file__).resolve().parent.parent))
    line = proc.stdout.readline()
    if not line:
        proc.terminate()
        raise click.ClickException("the fake cluster did not start; is fakepve installed? "
                                   "(pip install -e '.[demo]')")
    return proc, json.loads(line)


def register(info: dict) -> None:
    """Store the demo cluster, its pools and a product, as WHMCS and the panel would."""
    from core.accounts import ServerParams, upsert_server
    from core.extensions import db
    from core.models import IPPool, Product

    upsert_server(ServerParams(id=DEMO_SERVER_ID, name="demo-cluster", hostname=info["host"], ip=info["host"],
                               port=info["port"], token_id=info["token_id"], token_secret=info["token_secret"],
                               verify_tls=True, ca_pem=Path(info["ca_file"]).read_text(), assigned_ips=""))
    if not db.session.query(IPPool).filter_by(server_id=DEMO_SERVER_ID).count():
        db.session.add_all([
            IPPool(server_id=DEMO_SERVER_ID, family=4, bridge="vmbr0", vlan=0, gateway="192.0.2.1", mask=24,
                   dns1="192.0.2.53", dns2="", first="192.0.2.10", last="192.0.2.250"),
            IPPool(server_id=DEMO_SERVER_ID, family=6, bridge="vmbr0", vlan=0, gateway="2001:db8::1", mask=64,
                   dns1="2001:db8::53", dns2="", first="2001:db8::10", last="2001:db8::ffff"),
        ])
    product = db.session.get(Product, DEMO_PRODUCT_ID) or Product(id=DEMO_PRODUCT_ID, name="VPS Start")
    product.settings = {"template_vmid": 9000, "template_node": "pve1", "target_node": "",
                        "clone_mode": "full", "cpu_cores": 2, "ram_mb": 2048, "system_disk_storage": "local-lvm",
                        "system_disk_gb": 20, "system_disk_mbps_rd": 200, "system_disk_mbps_wr": 100,
                        "additional_disk_storage": "local-lvm", "additional_disk_gb": 10,
                        "ipv4_count": 1, "ipv6_count": 1, "main_domain": "demo.example",
                        "email_welcome": "", "email_vm_ready": ""}
    db.session.add(product)
    db.session.commit()


def demo_params(service_id: int, info: dict) -> dict:
    return {"serviceid": service_id, "userid": 1, "pid": DEMO_PRODUCT_ID, "serverid": DEMO_SERVER_ID,
            "productname": "VPS Start", "domain": f"vps{service_id}.demo.example", "username": "root",
            "password": "Demo-" + os.urandom(6).hex(), "status": "Active",
            "serverhostname": info["host"], "serverip": info["host"], "serverport": info["port"],
            "serverusername": info["token_id"], "serverpassword": info["token_secret"],
            "serveraccesshash": Path(info["ca_file"]).read_text(),
            "clientsdetails": {"firstname": "Demo", "lastname": "Client", "email": "demo@example.com"}}


@click.command("demo")
@click.option("--port", default=5000, show_default=True, type=int, help="Where the product listens.")
@click.option("--vms", default=3, show_default=True, type=int, help="How many CreateAccounts to send.")
@click.option("--time-scale", default=0.05, show_default=True, type=float,
              help="Real seconds per Proxmox second in the fake cluster (a 30 s clone takes 1.5 s).")
@click.option("--exit-when-ready", is_flag=True, help="Stop once every demo VM is ready (for scripts).")
@with_appcontext
def demo_command(port: int, vms: int, time_scale: float, exit_when_ready: bool) -> None:
    """Run the product against a fake Proxmox cluster and deploy a few VMs through the signed bridge.

    The demo keeps its own database, instance/demo.sqlite3, started afresh at every run (the fake cluster
    is new each time too), so it never mixes with what `flask serve` keeps; its panel gets an admin `demo`
    with a fresh password, printed."""
    from app import create_app
    with _fresh_demo_app(create_app).app_context():
        _run_demo(port, vms, time_scale, exit_when_ready)


def _fresh_demo_app(create_app):
    instance = Path(current_app.instance_path)
    for name in ("demo.sqlite3", "demo.sqlite3-wal", "demo.sqlite3-shm", "demo.sqlite3-journal"):
        (instance / name).unlink(missing_ok=True)
    return create_app({"INSTANCE_PATH": str(instance),
                       "SQLALCHEMY_DATABASE_URI": "sqlite:///" + str(instance / "demo.sqlite3"),
                       "TICKER_SECONDS": 60, "TASK_POLL_SECONDS": 0.5, "REDIS_URL": None,
                       "QUIET_MIGRATIONS": True})


def _run_demo(port: int, vms: int, time_scale: float, exit_when_ready: bool) -> None:
    import secrets

    from flask_migrate import upgrade
    from werkzeug.serving import make_server

    from app import print_progress
    from bridge.signing import signed_headers
    from core import admins
    from core.extensions import db
    from core.models import VM
    from jobs.ticker import Ticker

    app = current_app._get_current_object()
    upgrade()
    password = secrets.token_urlsafe(12)
    admins.create_admin("demo", password)
    print_progress()  # the ticker's cron output and the pipelines' steps, as the original prints them
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    proc, info = start_cluster(time_scale, Path(app.instance_path) / "demo-pki")
    try:
        register(info)
        click.echo(f"Fake Proxmox cluster (fakepve) at {info['url']}, nodes pve1 and pve2")
        server = make_server("127.0.0.1", port, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        Ticker(app).start()
        click.echo(f"Bridge and panel on http://127.0.0.1:{port}/ (log in as demo / {password}); "
                   "in-process ticker started")
        secret = app.config["BRIDGE_SECRET"]
        service_ids = [1000 + n for n in range(1, vms + 1)]
        for service_id in service_ids:
            body = json.dumps(demo_params(service_id, info)).encode()
            path = "/bridge/v1/module/CreateAccount"
            answer = requests.post(f"http://127.0.0.1:{port}{path}", data=body,
                                   headers=signed_headers(secret, "POST", path, body), timeout=30)
            click.echo(f"CreateAccount service={service_id}: HTTP {answer.status_code} {answer.text.strip()}")
        while True:
            time.sleep(1)
            if exit_when_ready:
                db.session.expire_all()
                statuses = {v.service_id: v.status for v in db.session.query(VM)
                            .filter(VM.service_id.in_(service_ids))}
                if statuses and all(s == "ready" for s in statuses.values()):
                    click.echo("All demo VMs are ready: " + ", ".join(f"{k}={v}" for k, v in statuses.items()))
                    server.shutdown()
                    return
    except KeyboardInterrupt:
        pass
    finally:
        proc.terminate()
        proc.wait(10)
