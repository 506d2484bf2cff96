"""Product module settings: defaults for everything, validation with every error at once, the CLI."""
from __future__ import annotations

import json

import pytest

from core.extensions import db
from core.models import Product
from core.products import ProductSettings, ProductSettingsError, resolve_package, validate


def test_every_setting_has_a_default():
    settings = ProductSettings.from_stored({})
    assert settings.cpu_cores == 1 and settings.ram_mb == 1024 and settings.first_vmid == 100
    assert settings.ipv4_count == 1 and settings.ipv6_count == 0 and settings.clone_mode == "full"
    assert settings.firewall_policy_in == "ACCEPT" and settings.vm_name_rule == "{prefix}-{client_id}-{service_id}"


def test_stored_values_override_defaults_and_bad_ones_fall_back():
    settings = ProductSettings.from_stored({"cpu_cores": "4", "ram_mb": "lots", "dhcp": "on", "junk": 1})
    assert settings.cpu_cores == 4 and settings.ram_mb == 1024 and settings.dhcp is True
    assert resolve_package({"cpu_cores": 2}, {"CPU Cores": "8"}).cpu_cores == 8  # the option wins


def test_validate_reports_every_problem():
    with pytest.raises(ProductSettingsError) as err:
        validate({"cpu_cores": 0, "network_bridge": "1bad bridge", "network_vlan": 5000, "clone_mode": "copy",
                  "first_vmid": 50, "firewall_policy_in": "ALLOW", "system_disk_gb": -1, "nope": 1,
                  "template_vmid": 50, "ipv4_count": 100000})  # the last two found in review
    assert set(err.value.errors) == {"cpu_cores", "network_bridge", "network_vlan", "clone_mode", "first_vmid",
                                     "firewall_policy_in", "system_disk_gb", "nope", "template_vmid", "ipv4_count"}
    assert validate({"template_vmid": 0, "ipv4_count": 0})["template_vmid"] == 0  # not set yet: fine


def test_product_cli_sets_all_or_nothing(app, runner):
    result = runner.invoke(args=["product", "set", "3", "template_vmid=9000", "template_node=pve1",
                                 "cpu_cores=2", "--name", "VPS Start"])
    assert result.exit_code == 0, result.output
    bad = runner.invoke(args=["product", "set", "3", "cpu_cores=4", "network_vlan=9999"])
    assert bad.exit_code != 0 and "network_vlan" in bad.output
    product = db.session.get(Product, 3)
    db.session.refresh(product)
    assert product.name == "VPS Start" and product.settings["cpu_cores"] == 2
    shown = json.loads(runner.invoke(args=["product", "show", "3"]).output)
    assert shown["template_vmid"] == 9000 and shown["ram_mb"] == 1024


def test_values_the_product_could_not_use_later_are_refused_at_once(app):
    """Found in review: these were stored and failed only when a VM, a DNS record or a request used them."""
    from core import pools, settings
    from core.dns import ZoneError, validate_zone
    from core.models import Server
    from core.pools import PoolError
    from core.settings import SettingError

    for values, field in (({"main_domain": "a..b"}, "main_domain"), ({"main_domain": "x" * 64 + ".com"}, "main_domain"),
                          ({"main_domain": "-a.com"}, "main_domain"), ({"os_username": "root user:x"}, "os_username"),
                          ({"os_username": "Admin"}, "os_username"),
                          ({"vm_name_rule": "{prefix}" * 100}, "vm_name_rule"), ({"email_upgrade": "e" * 256}, "email_upgrade")):
        with pytest.raises(ProductSettingsError) as refused:
            validate(values)
        assert set(refused.value.errors) == {field}, values
    assert validate({"main_domain": "cloud.example.com", "os_username": "ubuntu"})
    assert validate({"os_username": ""}) == {"os_username": ""}  # empty: the WHMCS service's username

    for name in ("-", ".com", "a..b", "-a-.b", "x" * 64 + ".com"):
        with pytest.raises(ZoneError) as refused:
            validate_zone({"provider": "powerdns", "name": name, "server_url": "http://127.0.0.1:8081",
                           "api_key": "k"})
        assert "name" in refused.value.errors, name
    with pytest.raises(ZoneError) as refused:
        validate_zone({"provider": "powerdns", "name": "example.com", "server_url": "http://127.0.0.1:8081\nX: y",
                       "api_key": "k"})
    assert set(refused.value.errors) == {"server_url"}
    assert validate_zone({"provider": "powerdns", "name": "0/26.2.0.192.in-addr.arpa",
                          "server_url": "http://127.0.0.1:8081", "api_key": "k"})["name"] == "0/26.2.0.192.in-addr.arpa"

    db.session.add(Server(id=1, name="pve", hostname="127.0.0.1", token_id="root@pam!t"))
    db.session.commit()
    for key, value in (("gateway", "fe80::1%eth0"), ("first", "fe80::10%x"), ("dns1", "fe80::53%eth1")):
        row = {"server_id": 1, "family": 6, "bridge": "vmbr0", "gateway": "fe80::1", "mask": 64,
               "first": "fe80::10", "last": "fe80::20", key: value}
        with pytest.raises(PoolError) as refused:
            pools.validate(row)
        assert key in refused.value.errors, key

    with pytest.raises(SettingError) as refused:
        settings.update({"dns_json_allowlist": "192.0.2.10, not-an-ip, 10.0.0.0/33"})
    assert "not-an-ip, 10.0.0.0/33" in str(refused.value.errors["dns_json_allowlist"])
    settings.update({"dns_json_allowlist": "192.0.2.10, 2001:db8::/32"})
    assert settings.get("dns_json_allowlist") == "192.0.2.10, 2001:db8::/32"
