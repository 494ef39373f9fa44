"""What each system holds, as the status page names it (from the privacy policy), and what a retained
category and its legal basis are called. ``web.categories`` in the config adds or overrides systems."""

from __future__ import annotations

from collections.abc import Mapping

from worker.config import WebCategory

DEFAULTS: dict[str, WebCategory] = {
    "orders_db": WebCategory(en="Customer account, orders, deliveries and invoices",
                             fr="Compte client, commandes, livraisons et factures"),
    "loyalty": WebCategory(en="Loyalty points and promo codes", fr="Points de fidélité et codes promo"),
    "newsletter": WebCategory(en="Newsletter subscription", fr="Abonnement à la newsletter"),
    "contact_forms": WebCategory(en="Contact form messages", fr="Messages du formulaire de contact"),
    "call_recordings": WebCategory(en="Customer service call recordings",
                                   fr="Enregistrements des appels au service client"),
    "shopimind": WebCategory(en="Shopimind: marketing emails (France)",
                             fr="Shopimind : e-mails marketing (France)", vendor=True),
    "nosto": WebCategory(en="Nosto: marketing emails and remarketing (Finland)",
                         fr="Nosto : e-mails marketing et remarketing (Finlande)", vendor=True),
    "facebook": WebCategory(en="Facebook: login with Facebook (United States)",
                            fr="Facebook : connexion avec Facebook (États-Unis)", vendor=True),
    "google_analytics": WebCategory(en="Google Analytics: site traffic analysis (United States)",
                                    fr="Google Analytics : mesure d'audience du site (États-Unis)", vendor=True),
    "google_ads": WebCategory(en="Google Ads: advertising and remarketing (United States)",
                              fr="Google Ads : publicité et remarketing (États-Unis)", vendor=True),
}

RETAINED_CATEGORIES: dict[str, dict[str, str]] = {
    "invoices": {"en": "Invoices and credit notes", "fr": "Factures et avoirs"},
    "call recordings": {"en": "Customer service call recordings", "fr": "Enregistrements des appels au service client"},
}

LEGAL_BASES: dict[str, dict[str, str]] = {
    "billing retention": {
        "en": "legal obligation to keep accounting records (French Commercial Code, art. L123-22)",
        "fr": "obligation légale de conservation des pièces comptables (Code de commerce, art. L123-22)",
    },
    "legal hold": {"en": "legal hold", "fr": "gel légal"},
    "object lock retention": {"en": "storage retention lock", "fr": "verrou de conservation du stockage"},
    "object lock retention (compliance)": {"en": "storage retention lock", "fr": "verrou de conservation du stockage"},
    "object lock retention (governance)": {"en": "storage retention lock", "fr": "verrou de conservation du stockage"},
}


def category(system: str, overrides: Mapping[str, WebCategory]) -> WebCategory:
    return overrides.get(system) or DEFAULTS.get(system) or WebCategory(en=system, fr=system)


def named(table: Mapping[str, Mapping[str, str]], key: str, lang: str) -> str:
    """A known category or legal basis in the page's language; an unknown one as the connector wrote it."""
    entry = table.get(key.strip().lower())
    return entry[lang] if entry else key
