"""French and English for the status page: the language from ``?lang=`` or ``Accept-Language``, dates, phrases.

French is the default: the retailer and most of its customers are in France.
"""

from __future__ import annotations

from datetime import date, datetime

LANGUAGES = ("fr", "en")
DEFAULT = "fr"

_MONTHS = {
    "fr": ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre", "octobre",
           "novembre", "décembre"),
    "en": ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"),
}


def choose(query_lang: str | None, accept_language: str | None) -> str:
    if query_lang in LANGUAGES:
        return query_lang
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate((accept_language or "").split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        primary = tag.strip().lower().split("-")[0]
        if primary in LANGUAGES and quality > 0:
            ranked.append((-quality, position, primary))
    return sorted(ranked)[0][2] if ranked else DEFAULT


def day(moment: date | datetime | None, lang: str) -> str:
    if moment is None:
        return "—"
    month = _MONTHS[lang][moment.month - 1]
    if lang == "fr":
        return f"{'1er' if moment.day == 1 else moment.day} {month} {moment.year}"
    return f"{moment.day} {month} {moment.year}"


TEXT: dict[str, dict[str, str]] = {
    "title": {"fr": "Votre demande de suppression de données", "en": "Your data deletion request"},
    "intro": {
        "fr": "Vous avez demandé, depuis Facebook, la suppression des données que {retailer} détient sur vous. "
              "Cette page suit votre demande. Elle ne montre aucune donnée personnelle.",
        "en": "Through Facebook, you asked {retailer} to delete the data it holds about you. This page follows "
              "your request. It shows no personal data.",
    },
    "switch": {"fr": "English version", "en": "Version française"},
    "progress": {"fr": "Avancement", "en": "Progress"},
    "step_received": {"fr": "Reçue", "en": "Received"},
    "step_in_progress": {"fr": "En cours", "en": "In progress"},
    "step_completed": {"fr": "Terminée", "en": "Completed"},
    "step_done": {"fr": "étape franchie", "en": "step reached"},
    "step_current": {"fr": "étape en cours", "en": "current step"},
    "step_todo": {"fr": "étape à venir", "en": "step to come"},
    "status_received": {"fr": "Nous avons reçu votre demande.", "en": "We have received your request."},
    "status_in_progress": {"fr": "Nous traitons votre demande.", "en": "We are processing your request."},
    "status_action_required": {
        "fr": "Nous traitons votre demande ; l'un de nos systèmes demande une intervention de notre équipe, "
              "qui s'en occupe.",
        "en": "We are processing your request; one of our systems needs our team's attention, which it is "
              "getting.",
    },
    "status_completed": {"fr": "Votre demande est terminée.", "en": "Your request is complete."},
    "status_rejected": {
        "fr": "Nous n'avons pas pu traiter votre demande automatiquement. Contactez notre service de protection "
              "des données ci-dessous.",
        "en": "We could not process your request automatically. Please contact our data protection service "
              "below.",
    },
    "status_no_data": {
        "fr": "Nous avons vérifié : nous ne détenions aucune donnée liée à votre compte Facebook. Il n'y avait "
              "rien à supprimer.",
        "en": "We checked: we held no data linked to your Facebook account. There was nothing to delete.",
    },
    "received_on": {"fr": "Reçue le", "en": "Received on"},
    "checked_on": {"fr": "Vérifiée le", "en": "Checked on"},
    "completed_on": {"fr": "Terminée le", "en": "Completed on"},
    "deadline": {"fr": "Délai légal de réponse", "en": "Legal deadline"},
    "deadline_note": {
        "fr": "Le RGPD (article 12) nous donne un mois pour répondre à votre demande.",
        "en": "The GDPR (Article 12) gives us one month to answer your request.",
    },
    "systems": {"fr": "Ce que nous avons fait, par catégorie de données", "en": "What we did, by category of data"},
    "category": {"fr": "Catégorie", "en": "Category"},
    "result": {"fr": "Résultat", "en": "Result"},
    "our_systems": {"fr": "Nos systèmes", "en": "Our systems"},
    "vendors": {"fr": "Nos prestataires", "en": "Our service providers"},
    "vendors_note": {
        "fr": "« Demandée » signifie que le prestataire a reçu et accepté notre demande de suppression, mais "
              "qu'il ne fournit pas de preuve de son exécution.",
        "en": "“Requested” means the provider received and accepted our deletion request, but gives no proof "
              "that it was carried out.",
    },
    "kept": {"fr": "Ce que nous conservons, et pourquoi", "en": "What we keep, and why"},
    "kept_none": {
        "fr": "Nous ne conservons aucune donnée vous concernant au titre d'une obligation légale.",
        "en": "We keep no data about you under a legal obligation.",
    },
    "kept_pending": {
        "fr": "Cette liste sera complète quand la demande sera terminée.",
        "en": "This list will be complete when the request is.",
    },
    "kept_item": {"fr": "{category} : conservées jusqu'au {until}. Base légale : {basis}.",
                  "en": "{category}: kept until {until}. Legal basis: {basis}."},
    "proof": {
        "fr": "Nous gardons aussi la trace de cette demande et de son traitement, sans votre nom ni vos "
              "coordonnées, pour prouver que nous l'avons exécutée (RGPD, article 5, paragraphe 2).",
        "en": "We also keep a record of this request and of how it was handled, without your name or contact "
              "details, to prove that we carried it out (GDPR, Article 5(2)).",
    },
    "contact": {"fr": "Une question ?", "en": "A question?"},
    "contact_intro": {
        "fr": "Écrivez à notre service de protection des données en indiquant l'adresse de cette page (elle "
              "contient votre code de confirmation) :",
        "en": "Write to our data protection service, quoting this page's address (it holds your confirmation "
              "code):",
    },
    "contact_email": {"fr": "Adresse électronique", "en": "Email"},
    "contact_url": {"fr": "Formulaire en ligne", "en": "Online form"},
    "contact_post": {"fr": "Courrier", "en": "Post"},
    "complaint": {
        "fr": "Vous pouvez aussi introduire une réclamation auprès de la CNIL, l'autorité française de "
              "protection des données.",
        "en": "You may also lodge a complaint with the CNIL, the French data protection authority.",
    },
    "keep_link": {
        "fr": "Conservez l'adresse de cette page : elle est la seule clé de votre suivi.",
        "en": "Keep this page's address: it is the only key to following your request.",
    },
    "not_found_title": {"fr": "Page introuvable", "en": "Page not found"},
    "not_found": {
        "fr": "Ce code de confirmation ne correspond à aucune demande. Vérifiez l'adresse reçue depuis Facebook.",
        "en": "This confirmation code matches no request. Check the address Facebook gave you.",
    },
    "outcome_erased": {"fr": "Supprimées", "en": "Deleted"},
    "outcome_anonymized": {"fr": "Anonymisées : vos coordonnées ont été retirées",
                           "en": "Anonymised: your personal details were removed"},
    "outcome_not_found": {"fr": "Aucune donnée détenue", "en": "No data held"},
    "outcome_retained": {"fr": "Conservées au titre d'une obligation légale", "en": "Kept under a legal obligation"},
    "outcome_requested": {"fr": "Demandée", "en": "Requested"},
    "outcome_manually_confirmed": {"fr": "Supprimées, confirmé par notre équipe",
                                   "en": "Deleted, confirmed by our team"},
    "outcome_pending": {"fr": "En cours", "en": "In progress"},
    "outcome_waiting_vendor": {"fr": "En attente du prestataire", "en": "Waiting for the provider"},
    "outcome_waiting": {"fr": "En attente", "en": "Waiting"},
    "code_label": {"fr": "Code de confirmation", "en": "Confirmation code"},
    "language": {"fr": "Langue", "en": "Language"},
}


def text(key: str, lang: str, **values: str) -> str:
    template = TEXT[key][lang]
    return template.format(**values) if values else template
