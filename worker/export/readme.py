"""The README of an export package, in French and English: the GDPR Art. 15 information.

Defaults come from the retailer's privacy policy (``seed/privacy-policy.txt``); every item can be
overridden from ``export.readme`` in the config. A text is either one string (used for both
languages) or ``{en: ..., fr: ...}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from worker.core.errors import ConfigError

Lang = Literal["en", "fr"]


@dataclass(frozen=True)
class Text:
    en: str
    fr: str

    def __call__(self, lang: Lang) -> str:
        return self.en if lang == "en" else self.fr


@dataclass(frozen=True)
class Recipient:
    name: str
    location: str
    purpose: Text
    outside_eu: bool


@dataclass(frozen=True)
class ReadmeInfo:
    controller: str
    contact: Text
    purposes: tuple[Text, ...]
    categories: tuple[Text, ...]
    recipients: tuple[Recipient, ...]
    retention: tuple[Text, ...]
    rights: tuple[Text, ...]
    source: Text


@dataclass(frozen=True)
class PackagedSystem:
    system: str
    records: int
    files: tuple[str, ...]


def _t(en: str, fr: str) -> Text:
    return Text(en=en, fr=fr)


DEFAULT_README = ReadmeInfo(
    controller="VET SECURITE, 34 rue de Sistrière, 15000 Aurillac, France (SIRET 491 765 160 000 16)",
    contact=_t(
        "VET SECURITE's data protection service: the contact button on our website, or by post at the address above.",
        "Le service de protection des données de VET SECURITE : bouton contact de notre site, ou par "
        "courrier à l'adresse ci-dessus.",
    ),
    purposes=(
        _t(
            "Orders, order tracking, addresses, returns, credits and loyalty management",
            "Commandes, suivi de commande, adresses, retours, avoirs et gestion de la fidélité",
        ),
        _t("Billing", "Facturation"),
        _t(
            "Customer relationship management (contact form, customer service)",
            "Gestion de la relation client (formulaire de contact, service client)",
        ),
        _t(
            "Customer service call recordings: verifying a transaction, answering requests, service quality",
            "Enregistrement des appels au service client : vérifier une transaction, répondre aux demandes, "
            "qualité de service",
        ),
        _t(
            "Marketing emails and remarketing, customer profiling for marketing target groups",
            "Emails marketing et remarketing, profilage pour des groupes cibles marketing",
        ),
        _t("Site traffic analysis and advertising", "Analyse du trafic du site et publicité"),
        _t("Logging in with a Facebook account", "Connexion au compte client avec Facebook"),
    ),
    categories=(
        _t(
            "Identity and contact: last name, first name, address, phone number, email address, date of birth",
            "Identité et contact : nom, prénom, adresse, téléphone, email, date de naissance",
        ),
        _t("Company name and company contact person", "Nom de la société et personne de contact"),
        _t(
            "Direct marketing information and consents, customer classification",
            "Informations de prospection directe et consentements, classification client",
        ),
        _t(
            "Orders, deliveries, returns, credits and invoices",
            "Commandes, livraisons, retours, avoirs et factures",
        ),
        _t("Loyalty points, promo codes and loyalty history", "Points de fidélité, codes promo et historique"),
        _t(
            "Newsletter subscription: email, professions, consent history",
            "Abonnement newsletter : email, professions, historique du consentement",
        ),
        _t("Contact-form messages", "Messages du formulaire de contact"),
        _t("Customer service call recordings", "Enregistrements des appels au service client"),
        _t(
            "Online identifiers (analytics client ids, Facebook app-scoped id, marketing ids)",
            "Identifiants en ligne (identifiants analytics, identifiant Facebook, identifiants marketing)",
        ),
    ),
    recipients=(
        Recipient(
            "VET SECURITE logistics, marketing and customer service",
            "France",
            _t(
                "Internal access, limited to each team's tasks",
                "Accès interne, limité aux tâches de chaque équipe",
            ),
            False,
        ),
        Recipient("Shopimind", "France", _t("Marketing emails", "Emails marketing"), False),
        Recipient(
            "Nosto",
            "Finland",
            _t("Marketing emails and remarketing", "Emails marketing et remarketing"),
            False,
        ),
        Recipient("Facebook", "United States", _t("Login with Facebook", "Connexion avec Facebook"), True),
        Recipient(
            "Google Analytics",
            "United States",
            _t("Site traffic analysis and remarketing", "Analyse du trafic et remarketing"),
            True,
        ),
        Recipient("Google Ads", "United States", _t("Advertising and remarketing", "Publicité et remarketing"), True),
    ),
    retention=(
        _t(
            "Customer account: customer lifetime; accounts inactive for 2 years are deleted",
            "Compte client : durée de la relation client ; les comptes inactifs depuis 2 ans sont supprimés",
        ),
        _t(
            "Billing data: at least 1 year and at most 3 years after the invoice due date, longer only when "
            "needed to collect the invoice or when the law requires it",
            "Données de facturation : au moins 1 an et au plus 3 ans après l'échéance de la facture, plus "
            "longtemps seulement pour le recouvrement ou lorsque la loi l'exige",
        ),
        _t("Contact-form messages: 1 year", "Messages du formulaire de contact : 1 an"),
        _t(
            "Newsletter: for the duration of your opt-in, unless you object",
            "Newsletter : pendant la durée de votre consentement, sauf opposition",
        ),
        _t(
            "Call recordings: as long as needed to verify the discussion; ask our data protection service",
            "Enregistrements d'appels : le temps nécessaire pour vérifier l'échange ; demandez à notre "
            "service de protection des données",
        ),
    ),
    rights=(
        _t(
            "Access to your data (GDPR Art. 15) and a copy of it: this package",
            "Accès à vos données (RGPD art. 15) et copie : ce paquet",
        ),
        _t(
            "Rectification (Art. 16), erasure (Art. 17) and restriction of processing (Art. 18)",
            "Rectification (art. 16), effacement (art. 17) et limitation du traitement (art. 18)",
        ),
        _t(
            "Portability (Art. 20): the JSON and CSV files of this package are machine-readable",
            "Portabilité (art. 20) : les fichiers JSON et CSV de ce paquet sont lisibles par machine",
        ),
        _t(
            "Objection (Art. 21), including to direct marketing at any time, and withdrawal of consent",
            "Opposition (art. 21), notamment à la prospection à tout moment, et retrait du consentement",
        ),
        _t(
            "A complaint to the supervisory authority, the CNIL (www.cnil.fr) (Art. 77)",
            "Une réclamation auprès de l'autorité de contrôle, la CNIL (www.cnil.fr) (art. 77)",
        ),
    ),
    source=_t(
        "From you (your account, orders, forms and calls) and automatically when you use our services.",
        "Auprès de vous (compte, commandes, formulaires et appels) et automatiquement lorsque vous utilisez "
        "nos services.",
    ),
)


def _text(value: Any, where: str) -> Text:
    if isinstance(value, str):
        return Text(en=value, fr=value)
    if isinstance(value, Mapping) and isinstance(value.get("en"), str) and isinstance(value.get("fr"), str):
        return Text(en=value["en"], fr=value["fr"])
    raise ConfigError(f"{where} must be a string or a mapping with 'en' and 'fr' strings")


def _texts(value: Any, where: str) -> tuple[Text, ...]:
    if isinstance(value, str | Mapping) or not isinstance(value, Sequence):
        raise ConfigError(f"{where} must be a list")
    return tuple(_text(item, f"{where}[{i}]") for i, item in enumerate(value))


def _recipient(value: Any, where: str) -> Recipient:
    if not isinstance(value, Mapping) or not isinstance(value.get("name"), str):
        raise ConfigError(f"{where} must be a mapping with a name")
    return Recipient(
        name=value["name"],
        location=str(value.get("location", "")),
        purpose=_text(value.get("purpose", ""), f"{where}.purpose"),
        outside_eu=bool(value.get("outside_eu", False)),
    )


def readme_from_settings(raw: Mapping[str, Any]) -> ReadmeInfo:
    unknown = sorted(set(raw) - set(ReadmeInfo.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"export.readme: unknown settings {', '.join(unknown)}")
    info = DEFAULT_README
    where = "export.readme"
    recipients = raw.get("recipients")
    if recipients is not None and (isinstance(recipients, str | Mapping) or not isinstance(recipients, Sequence)):
        raise ConfigError(f"{where}.recipients must be a list")
    return ReadmeInfo(
        controller=str(raw.get("controller", info.controller)),
        contact=_text(raw["contact"], f"{where}.contact") if "contact" in raw else info.contact,
        purposes=_texts(raw["purposes"], f"{where}.purposes") if "purposes" in raw else info.purposes,
        categories=_texts(raw["categories"], f"{where}.categories") if "categories" in raw else info.categories,
        recipients=(
            tuple(_recipient(r, f"{where}.recipients[{i}]") for i, r in enumerate(recipients))
            if recipients is not None
            else info.recipients
        ),
        retention=_texts(raw["retention"], f"{where}.retention") if "retention" in raw else info.retention,
        rights=_texts(raw["rights"], f"{where}.rights") if "rights" in raw else info.rights,
        source=_text(raw["source"], f"{where}.source") if "source" in raw else info.source,
    )


_HEADINGS: dict[str, Text] = {
    "title": _t("Your personal data", "Vos données personnelles"),
    "intro": _t(
        "This package answers your request for access to your personal data (GDPR Art. 15 and 20).",
        "Ce paquet répond à votre demande d'accès à vos données personnelles (RGPD art. 15 et 20).",
    ),
    "request": _t("Request", "Demande"),
    "generated": _t("Generated at (UTC)", "Généré le (UTC)"),
    "controller": _t("Data controller", "Responsable du traitement"),
    "contents": _t("Contents", "Contenu"),
    "contents_note": _t(
        "One folder per system. Tables are given as JSON and as CSV (UTF-8). In the CSV files, a text that "
        "starts with =, +, -, @, a tab or a carriage return begins with an added ' so that a spreadsheet "
        "shows it rather than runs it; the JSON files hold every value exactly. manifest.json lists every "
        "file with its SHA-256 checksum.",
        "Un dossier par système. Les tables sont fournies en JSON et en CSV (UTF-8). Dans les fichiers CSV, "
        "un texte qui commence par =, +, -, @, une tabulation ou un retour chariot est précédé d'une ' "
        "ajoutée, pour qu'un tableur l'affiche au lieu de l'exécuter ; les fichiers JSON contiennent chaque "
        "valeur à l'identique. manifest.json liste chaque fichier avec son empreinte SHA-256.",
    ),
    "records": _t("records", "enregistrements"),
    "none": _t("no data held", "aucune donnée détenue"),
    "purposes": _t("Purposes of processing", "Finalités du traitement"),
    "categories": _t("Categories of personal data", "Catégories de données personnelles"),
    "recipients": _t("Recipients (subprocessors)", "Destinataires (sous-traitants)"),
    "outside_eu": _t("outside the EU", "hors UE"),
    "inside_eu": _t("within the EU", "dans l'UE"),
    "retention": _t("Retention periods", "Durées de conservation"),
    "source": _t("Source of the data", "Origine des données"),
    "rights": _t("Your rights", "Vos droits"),
    "contact": _t("Contact", "Contact"),
}


def render(
    info: ReadmeInfo, lang: Lang, request_id: str, generated_at: datetime, systems: Sequence[PackagedSystem]
) -> str:
    h = {key: text(lang) for key, text in _HEADINGS.items()}
    lines = [
        f"# {h['title']}",
        "",
        h["intro"],
        "",
        f"- {h['request']}: {request_id}",
        f"- {h['generated']}: {generated_at.isoformat()}",
        f"- {h['controller']}: {info.controller}",
        "",
        f"## {h['contents']}",
        "",
        h["contents_note"],
        "",
    ]
    for packaged in systems:
        state = f"{packaged.records} {h['records']}" if packaged.files else h["none"]
        lines.append(f"- {packaged.system}/: {state}")
    lines += ["", f"## {h['purposes']}", ""] + [f"- {p(lang)}" for p in info.purposes]
    lines += ["", f"## {h['categories']}", ""] + [f"- {c(lang)}" for c in info.categories]
    lines += ["", f"## {h['recipients']}", ""]
    for r in info.recipients:
        where = h["outside_eu"] if r.outside_eu else h["inside_eu"]
        lines.append(f"- {r.name} ({r.location}, {where}): {r.purpose(lang)}")
    lines += ["", f"## {h['retention']}", ""] + [f"- {r(lang)}" for r in info.retention]
    lines += ["", f"## {h['source']}", "", info.source(lang)]
    lines += ["", f"## {h['rights']}", ""] + [f"- {r(lang)}" for r in info.rights]
    lines += ["", f"## {h['contact']}", "", info.contact(lang), ""]
    return "\n".join(lines)
