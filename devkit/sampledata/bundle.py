"""Every row the internal systems hold about one customer, drawn from that customer's own RNG.

Each customer gets ``random.Random(f"{seed}:{index}")``, so customer N is the same whatever the
total, and ids are ``index * stride + k``, so bundles never collide and can be made in any order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from devkit.sampledata.people import PROFESSIONS, Person, person

Rows = dict[str, list[dict[str, Any]]]
CATALOGUE = (
    ("SHOE-S3-01", "Chaussures de sécurité S3", Decimal("79.90")),
    ("SHOE-S1P-02", "Baskets de sécurité S1P", Decimal("64.50")),
    ("VEST-HV-01", "Gilet haute visibilité", Decimal("9.90")),
    ("PANT-WORK-01", "Pantalon de travail multipoches", Decimal("42.00")),
    ("JACK-SOFT-01", "Veste softshell", Decimal("59.00")),
    ("GLOV-NIT-10", "Gants nitrile (boîte de 100)", Decimal("11.50")),
    ("GLOV-CUT-05", "Gants anti-coupure niveau 5", Decimal("14.90")),
    ("HELM-01", "Casque de chantier", Decimal("19.90")),
    ("EAR-01", "Casque antibruit", Decimal("24.90")),
    ("GOGG-01", "Lunettes de protection", Decimal("7.50")),
    ("SMOCK-VET-01", "Blouse vétérinaire", Decimal("34.90")),
    ("TSHIRT-01", "Tee-shirt de travail", Decimal("12.00")),
    ("POLO-EMB-01", "Polo brodé", Decimal("21.00")),
    ("APRON-01", "Tablier de cuisine", Decimal("16.00")),
    ("KNEE-01", "Genouillères", Decimal("18.50")),
)
SIZES = ("S", "M", "L", "XL", "XXL", "39", "40", "41", "42", "43", "44", "45")
CARRIERS = ("colissimo", "chronopost", "dpd", "gls")
RETURN_REASONS = ("size", "defect", "changed_mind", "wrong_item")
MESSAGES = (
    "Bonjour, ma commande {order} n'est pas arrivée, pouvez-vous vérifier ?",
    "Je voudrais échanger les chaussures de la commande {order} contre une pointure au-dessus.",
    "Pouvez-vous m'envoyer la facture de la commande {order} au nom de ma société ?",
    "Proposez-vous des gilets haute visibilité brodés au nom de l'entreprise ?",
    "Bonjour, je m'appelle {name}, j'ai été débité deux fois pour la commande {order}.",
    "Quels sont vos délais de livraison vers {city} ?",
)
STRIDE = {
    "address": 4,
    "consent": 8,
    "identifier": 8,
    "line": 500,
    "order": 100,
    "invoice": 200,
    "history": 400,
    "event": 8,
    "message": 8,
}


@dataclass
class Recording:
    customer_id: str
    call_id: str
    recorded_at: datetime
    duration_seconds: int
    agent: str
    direction: str


@dataclass
class Bundle:
    person: Person
    demo: bool = False
    rows: dict[str, Rows] = field(default_factory=dict)
    recordings: list[Recording] = field(default_factory=list)

    def add(self, system: str, table: str, row: dict[str, Any]) -> None:
        self.rows.setdefault(system, {}).setdefault(table, []).append(row)


DEMO_INDEX = 234  # C-100234, the subject of the contract's example command: present in every system
DEMO_IDENTIFIERS = (("ga_client_id", "123.456"), ("facebook_user_id", "10229"), ("shopimind_customer_id", "88"))


def customer_id(index: int) -> str:
    return f"C-{100000 + index}"


def bundle(seed: int, index: int, as_of: datetime) -> Bundle:
    rng = random.Random(f"{seed}:{index}")  # noqa: S311 - sample data, reproducible on purpose
    who = person(rng, index, customer_id(index), as_of.date())
    demo = index == DEMO_INDEX
    if demo:
        who = replace(
            who,
            first_name="Marie",
            last_name="Dupont",
            email="marie.dupont@example.fr",
            phone="+33612345678",
            classification="professional",
            company_name="Cabinet vétérinaire Dupont",
        )
    out = Bundle(who, demo=demo)
    created = as_of - timedelta(days=rng.uniform(20, 6 * 365) if not demo else 400)
    inactive = rng.random() < 0.12 and not demo  # accounts inactive for 2 years+: the retention sweeper's work
    last_login = (
        created + timedelta(days=rng.uniform(0, 60)) if inactive else as_of - timedelta(days=rng.expovariate(1 / 45))
    )
    last_login = max(created, min(last_login, as_of))
    active_until = min(as_of, last_login + timedelta(days=30))
    _account(rng, out, index, created, last_login)
    orders = _orders(rng, out, index, created, active_until)
    _loyalty(rng, out, index, created, active_until, orders)
    _newsletter(rng, out, index, created)
    _contact(rng, out, index, as_of, orders)
    _recordings(rng, out, index, created, active_until)
    return out


def _account(rng: random.Random, out: Bundle, index: int, created: datetime, last_login: datetime) -> None:
    p = out.person
    out.add(
        "orders_db",
        "customers",
        {
            "customer_id": p.customer_id,
            "email": p.email,
            "first_name": p.first_name,
            "last_name": p.last_name,
            "phone": p.phone if rng.random() < 0.8 else None,
            "birth_date": p.birth_date if rng.random() < 0.6 else None,
            "company_name": p.company_name,
            "company_contact": p.full_name if p.company_name else None,
            "vat_number": f"FR{rng.randint(10, 99)}{rng.randint(100_000_000, 999_999_999)}" if p.company_name else None,
            "classification": p.classification,
            "profession": p.profession,
            "self_description": "Artisan, commandes groupées pour l'équipe"
            if p.company_name and rng.random() < 0.2
            else None,
            "password_hash": f"$argon2id$v=19$m=65536,t=3,p=4${rng.getrandbits(64):016x}",
            "created_at": created,
            "last_login_at": last_login,
        },
    )
    for k in range(1 + (rng.random() < 0.35) + (rng.random() < 0.1)):
        postal_code, city, line1 = (
            (p.postal_code, p.city, p.line1) if k == 0 else ("15000", "Aurillac", f"{rng.randint(1, 90)} rue du Dépôt")
        )
        out.add(
            "orders_db",
            "addresses",
            {
                "address_id": index * STRIDE["address"] + k + 1,
                "customer_id": p.customer_id,
                "kind": "billing" if k == 0 else "shipping",
                "recipient_name": p.full_name,
                "company_name": p.company_name,
                "line1": line1,
                "line2": None,
                "postal_code": postal_code,
                "city": city,
                "country": "FR",
                "phone": p.phone,
                "is_default": k == 0,
            },
        )
    for k, purpose in enumerate(("email_marketing", "sms_marketing", "profiling", "partners")):
        out.add(
            "orders_db",
            "consents",
            {
                "consent_id": index * STRIDE["consent"] + k + 1,
                "customer_id": p.customer_id,
                "purpose": purpose,
                "granted": rng.random() < (0.55, 0.2, 0.3, 0.08)[k],
                "recorded_at": created,
                "source": "account",
            },
        )
    ids: list[tuple[str, str]] = []
    if rng.random() < 0.7:
        ids += [
            ("ga_client_id", f"{rng.randint(10**8, 10**9 - 1)}.{int(created.timestamp())}")
            for _ in range(1 + (rng.random() < 0.3))
        ]
    if rng.random() < 0.12:
        ids.append(("facebook_user_id", str(rng.randint(10**15, 10**16 - 1))))
    if rng.random() < 0.45:
        ids.append(("shopimind_customer_id", str(100000 + index)))
    if out.demo:
        ids = list(DEMO_IDENTIFIERS)
    for k, (kind, value) in enumerate(ids):
        out.add(
            "orders_db",
            "customer_identifiers",
            {
                "identifier_id": index * STRIDE["identifier"] + k + 1,
                "customer_id": p.customer_id,
                "kind": kind,
                "value": value,
                "recorded_at": created,
            },
        )


def _orders(rng: random.Random, out: Bundle, index: int, created: datetime, until: datetime) -> list[dict[str, Any]]:
    p = out.person
    pro = p.classification != "individual"
    if rng.random() < 0.18 and not out.demo:
        return []
    count = min(60, 1 + int(rng.expovariate(1 / (5.0 if pro else 1.8))))
    span = max((until - created).total_seconds(), 3600.0)
    placed = sorted(created + timedelta(seconds=rng.uniform(0, span)) for _ in range(count))
    orders = []
    invoice_k = 0
    for k, when in enumerate(placed):
        order_id = f"O{100000 + index}{k:03d}"
        age = (until - when).days
        status = (
            "placed"
            if age < 2
            else "shipped"
            if age < 5
            else rng.choices(("delivered", "cancelled", "returned"), (0.89, 0.04, 0.07))[0]
        )
        lines, subtotal = [], Decimal("0.00")
        for j in range(min(8, 1 + int(rng.expovariate(1 / 1.4)))):
            sku, name, price = rng.choice(CATALOGUE)
            quantity = rng.randint(1, 12) if pro and rng.random() < 0.5 else 1
            subtotal += price * quantity
            lines.append(
                {
                    "line_id": index * STRIDE["line"] + k * 8 + j + 1,
                    "order_id": order_id,
                    "sku": sku,
                    "product_name": name,
                    "size": rng.choice(SIZES),
                    "quantity": quantity,
                    "unit_price": price,
                    "vat_rate": Decimal("20.00"),
                    "embroidery_text": (p.company_name or p.full_name)[:64] if "brodé" in name else None,
                }
            )
        fee = Decimal("0.00") if subtotal >= 80 else Decimal("6.90")
        total = subtotal + fee
        order = {
            "order_id": order_id,
            "customer_id": p.customer_id,
            "placed_at": when,
            "status": status,
            "channel": rng.choices(("web", "phone", "store"), (0.85, 0.1, 0.05))[0],
            "currency": "EUR",
            "subtotal": subtotal,
            "shipping_fee": fee,
            "total": total,
            "email": p.email,
            "phone": p.phone,
            "shipping_name": p.full_name,
            "shipping_line1": p.line1,
            "shipping_postal_code": p.postal_code,
            "shipping_city": p.city,
            "shipping_country": "FR",
            "customer_note": "Livrer à l'atelier, portail bleu" if rng.random() < 0.05 else None,
            "promo_code": None,
        }
        out.add("orders_db", "orders", order)
        for line in lines:
            out.add("orders_db", "order_lines", line)
        orders.append(order)
        if status == "cancelled":
            continue
        shipped = when + timedelta(hours=rng.uniform(4, 72))
        out.add(
            "orders_db",
            "deliveries",
            {
                "delivery_id": index * STRIDE["order"] + k + 1,
                "order_id": order_id,
                "carrier": rng.choice(CARRIERS),
                "tracking_number": f"6A{rng.randint(10**10, 10**11 - 1)}" if status != "placed" else None,
                "shipped_at": shipped if status != "placed" else None,
                "delivered_at": shipped + timedelta(days=rng.uniform(1, 4))
                if status in ("delivered", "returned")
                else None,
                "recipient_name": p.full_name,
                "address_line": p.line1,
                "postal_code": p.postal_code,
                "city": p.city,
                "country": "FR",
                "phone": p.phone,
                "instructions": "Sonner deux fois" if rng.random() < 0.04 else None,
            },
        )
        issued = when.date()
        invoice_k += 1
        _invoice(rng, out, index, invoice_k, order, "invoice", issued, pro, total)
        if status == "returned":
            refund = total - fee
            out.add(
                "orders_db",
                "returns",
                {
                    "return_id": index * STRIDE["order"] + k + 1,
                    "order_id": order_id,
                    "requested_at": shipped + timedelta(days=rng.uniform(3, 20)),
                    "reason_code": rng.choice(RETURN_REASONS),
                    "comment": "Trop petit, je chausse du 44" if rng.random() < 0.3 else None,
                    "status": "refunded",
                    "refund_amount": refund,
                    "pickup_address": f"{p.line1}, {p.postal_code} {p.city}",
                },
            )
            invoice_k += 1
            _invoice(rng, out, index, invoice_k, order, "credit_note", issued + timedelta(days=20), pro, -refund)
    return orders


def _invoice(
    rng: random.Random,
    out: Bundle,
    index: int,
    k: int,
    order: dict[str, Any],
    kind: str,
    issued: date,
    pro: bool,
    amount: Decimal,
) -> None:
    p = out.person
    invoice_id = index * STRIDE["invoice"] + k
    excl = (amount / Decimal("1.2")).quantize(Decimal("0.01"))
    due = issued + timedelta(days=30 if pro else 0)
    paid = due if rng.random() < 0.97 or not pro else None
    out.add(
        "orders_db",
        "invoices",
        {
            "invoice_id": invoice_id,
            "invoice_number": f"{'FA' if kind == 'invoice' else 'AV'}-{invoice_id:010d}",
            "kind": kind,
            "order_id": order["order_id"],
            "customer_id": p.customer_id,
            "issued_on": issued,
            "due_on": due,
            "paid_on": paid,
            "status": "paid" if paid else "unpaid",
            "billing_name": p.full_name,
            "billing_company": p.company_name,
            "billing_line1": p.line1,
            "billing_postal_code": p.postal_code,
            "billing_city": p.city,
            "billing_country": "FR",
            "vat_number": None,
            "email": p.email,
            "phone": p.phone,
            "currency": "EUR",
            "amount_excl_tax": excl,
            "vat_amount": amount - excl,
            "amount_incl_tax": amount,
            "payment_method": rng.choice(("card", "card", "card", "transfer", "paypal")),
        },
    )


def _loyalty(
    rng: random.Random, out: Bundle, index: int, created: datetime, until: datetime, orders: list[dict[str, Any]]
) -> None:
    if rng.random() >= 0.55 and not out.demo:
        return
    p, k, balance = out.person, 0, 0
    for order in orders:
        if order["status"] in ("cancelled",):
            continue
        points = int(order["total"])
        balance += points
        k += 1
        out.add(
            "loyalty",
            "loyalty_history",
            {
                "entry_id": index * STRIDE["history"] + k,
                "customer_id": p.customer_id,
                "occurred_at": order["placed_at"],
                "kind": "earn",
                "points": points,
                "order_ref": order["order_id"],
                "note": None,
            },
        )
        if balance >= 500 and rng.random() < 0.5:
            k += 1
            balance -= 500
            out.add(
                "loyalty",
                "loyalty_history",
                {
                    "entry_id": index * STRIDE["history"] + k,
                    "customer_id": p.customer_id,
                    "occurred_at": order["placed_at"] + timedelta(days=1),
                    "kind": "redeem",
                    "points": -500,
                    "order_ref": None,
                    "note": "Bon d'achat 10 €",
                },
            )
    tier = "gold" if balance > 1500 else "silver" if balance > 400 else "bronze"
    out.add(
        "loyalty",
        "loyalty_accounts",
        {
            "customer_id": p.customer_id,
            "card_number": f"VS{100000 + index:08d}",
            "tier": tier,
            "points_balance": balance,
            "birthday": p.birth_date,
            "enrolled_at": created,
            "last_activity_at": orders[-1]["placed_at"] if orders else created,
        },
    )
    for j in range(rng.choice((0, 1, 1, 2, 3))):
        issued = created + timedelta(days=rng.uniform(0, max((until - created).days, 1)))
        kind = ("welcome", "birthday", "reward", "goodwill")[j % 4]
        out.add(
            "loyalty",
            "promo_codes",
            {
                "code": f"{kind[:3].upper()}{100000 + index}{j}{rng.choice('ABCDEFGHJKLMNPQRSTUVWXYZ')}",
                "customer_id": p.customer_id,
                "kind": kind,
                "discount_percent": 10 if kind != "goodwill" else None,
                "discount_amount": Decimal("15.00") if kind == "goodwill" else None,
                "issued_at": issued,
                "expires_on": (issued + timedelta(days=90)).date(),
                "redeemed_at": issued + timedelta(days=10) if rng.random() < 0.4 else None,
                "order_ref": None,
            },
        )


def _newsletter(rng: random.Random, out: Bundle, index: int, created: datetime) -> None:
    if rng.random() >= 0.35 and not out.demo:
        return
    p = out.person
    subscriber_id = index + 1
    unsubscribed = created + timedelta(days=rng.uniform(30, 400)) if rng.random() < 0.15 else None
    typed = p.email if rng.random() < 0.8 else p.email.capitalize()
    if out.demo:
        unsubscribed, typed = None, "Marie.Dupont@example.fr"  # as typed in the footer form
    out.add(
        "newsletter",
        "subscribers",
        {
            "subscriber_id": subscriber_id,
            "email": typed,
            "customer_id": p.customer_id,
            "status": "unsubscribed" if unsubscribed else "subscribed",
            "language": "fr",
            "source": rng.choice(("footer_form", "checkout", "account", "trade_show")),
            "subscribed_at": created,
            "unsubscribed_at": unsubscribed,
        },
    )
    for profession in dict.fromkeys([p.profession, rng.choice(PROFESSIONS)][: rng.choice((1, 1, 2))]):
        out.add("newsletter", "subscriber_professions", {"subscriber_id": subscriber_id, "profession": profession})
    events = [("opt_in", created), ("confirm", created + timedelta(minutes=rng.uniform(1, 600)))]
    if unsubscribed:
        events.append(("opt_out", unsubscribed))
    for k, (action, when) in enumerate(events):
        out.add(
            "newsletter",
            "consent_events",
            {
                "event_id": index * STRIDE["event"] + k + 1,
                "subscriber_id": subscriber_id,
                "occurred_at": when,
                "action": action,
                "source": "double_opt_in" if action != "opt_out" else "unsubscribe_link",
                "ip_address": f"192.0.2.{rng.randint(1, 254)}" if action != "opt_out" else None,
                "wording_version": "2024-03",
            },
        )


def _contact(rng: random.Random, out: Bundle, index: int, as_of: datetime, orders: list[dict[str, Any]]) -> None:
    if rng.random() >= 0.12 and not out.demo:
        return
    p = out.person
    for k in range(rng.choice((1, 1, 1, 2, 3)) if not out.demo else 2):
        received = as_of - timedelta(days=rng.uniform(0, 540))  # some are past the 1-year retention
        order = rng.choice(orders)["order_id"] if orders else None
        typed = rng.choice((p.email, p.email, f" {p.email.upper()} ", p.email.title(), f"{p.email}\t"))
        if out.demo:
            typed = f" {p.email.upper()} " if k == 0 else p.email.title()
        message_id = index * STRIDE["message"] + k + 1
        answered = rng.random() < 0.85
        out.add(
            "contact_forms",
            "contact_messages",
            {
                "message_id": message_id,
                "received_at": received,
                "email": typed,
                "topic": rng.choice(("order", "product", "return", "invoice", "other")),
                "message": rng.choice(MESSAGES).format(order=order or "-", name=p.full_name, city=p.city),
                "order_ref": order,
                "status": "closed" if answered else "new",
            },
        )
        if answered:
            out.add(
                "contact_forms",
                "contact_replies",
                {
                    "reply_id": message_id,
                    "message_id": message_id,
                    "sent_at": received + timedelta(hours=rng.uniform(1, 48)),
                    "agent": rng.choice(("sandrine", "yann")),
                    "body": f"Bonjour {p.first_name}, merci pour votre message. Cordialement, le service client.",
                },
            )


def _recordings(rng: random.Random, out: Bundle, index: int, created: datetime, until: datetime) -> None:
    if rng.random() >= 0.06 and not out.demo:
        return
    span = max((until - created).total_seconds(), 60.0)
    for k in range(rng.choice((1, 1, 2, 3))):
        out.recordings.append(
            Recording(
                customer_id=out.person.customer_id,
                call_id=f"CALL-{100000 + index}-{k}",
                recorded_at=(created + timedelta(seconds=rng.uniform(0, span))).replace(microsecond=0),
                duration_seconds=int(rng.lognormvariate(5.2, 0.6)),
                agent=rng.choice(("sandrine", "yann", "amandine")),
                direction=rng.choice(("inbound", "inbound", "inbound", "outbound")),
            )
        )
