"""Plausible French customers: names, addresses, phones, emails. Reserved example domains only."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date

FIRST_NAMES = (
    "Marie",
    "Jean",
    "Camille",
    "Lucas",
    "Léa",
    "Hugo",
    "Chloé",
    "Louis",
    "Manon",
    "Gabriel",
    "Emma",
    "Arthur",
    "Inès",
    "Jules",
    "Sarah",
    "Nathan",
    "Julie",
    "Théo",
    "Anaïs",
    "Paul",
    "Élodie",
    "Thomas",
    "Claire",
    "Nicolas",
    "Sophie",
    "Antoine",
    "Laura",
    "Maxime",
    "Céline",
    "Pierre",
    "Aurélie",
    "Romain",
    "Mathilde",
    "Julien",
    "Pauline",
    "Kévin",
    "Noémie",
    "Bastien",
    "Océane",
    "François",
)
LAST_NAMES = (
    "Martin",
    "Bernard",
    "Dubois",
    "Thomas",
    "Robert",
    "Richard",
    "Petit",
    "Durand",
    "Leroy",
    "Moreau",
    "Simon",
    "Laurent",
    "Lefebvre",
    "Michel",
    "Garcia",
    "David",
    "Bertrand",
    "Roux",
    "Vincent",
    "Fournier",
    "Morel",
    "Girard",
    "André",
    "Mercier",
    "Dupont",
    "Lambert",
    "Bonnet",
    "François",
    "Martinez",
    "Legrand",
    "Garnier",
    "Faure",
    "Rousseau",
    "Blanc",
    "Guérin",
    "Muller",
    "Henry",
    "Roussel",
    "Nicolas",
    "Perrin",
    "Chevalier",
    "Delmas",
    "Vidal",
    "Bouquet",
)
# (postal code, city): weighted towards the Auvergne, where the shop is, then the big cities.
CITIES = (
    ("15000", "Aurillac"),
    ("15000", "Aurillac"),
    ("15100", "Saint-Flour"),
    ("15200", "Mauriac"),
    ("63000", "Clermont-Ferrand"),
    ("43000", "Le Puy-en-Velay"),
    ("19100", "Brive-la-Gaillarde"),
    ("12000", "Rodez"),
    ("46000", "Cahors"),
    ("87000", "Limoges"),
    ("69003", "Lyon"),
    ("31000", "Toulouse"),
    ("75011", "Paris"),
    ("13008", "Marseille"),
    ("33000", "Bordeaux"),
    ("44000", "Nantes"),
    ("59000", "Lille"),
    ("67000", "Strasbourg"),
    ("34000", "Montpellier"),
    ("35000", "Rennes"),
)
STREETS = (
    "rue de la République",
    "avenue de la Gare",
    "rue Victor Hugo",
    "place du Marché",
    "rue des Écoles",
    "boulevard Pasteur",
    "chemin des Prés",
    "rue du Château",
    "allée des Tilleuls",
    "route de Clermont",
    "rue Jean Jaurès",
    "impasse des Artisans",
    "zone artisanale des Camisières",
    "rue de Sistrière",
)
COMPANY_KINDS = (
    "Maçonnerie",
    "Plomberie",
    "Électricité",
    "Menuiserie",
    "Transports",
    "Garage",
    "Boulangerie",
    "Cabinet vétérinaire",
    "Paysagiste",
    "Charpente",
    "Nettoyage",
    "Restaurant",
)
PROFESSIONS = (
    "construction",
    "industry",
    "health",
    "agriculture",
    "logistics",
    "catering",
    "cleaning",
    "public_service",
    "craft",
    "security",
)
DOMAINS = ("example.fr", "example.com", "example.org", "example.net")


@dataclass(frozen=True)
class Person:
    customer_id: str
    first_name: str
    last_name: str
    email: str
    phone: str
    birth_date: date
    postal_code: str
    city: str
    line1: str
    classification: str
    company_name: str | None
    profession: str

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}"


def ascii_fold(text: str) -> str:
    table = str.maketrans("éèêëàâäîïôöûüùçÉÈ", "eeeeaaaiioouuucEE")
    return text.translate(table).lower().replace(" ", "-").replace("'", "")


def person(rng: random.Random, index: int, customer_id: str, today: date) -> Person:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    postal_code, city = rng.choice(CITIES)
    roll = rng.random()
    classification = "individual" if roll < 0.70 else "professional" if roll < 0.97 else "public_body"
    company = None
    if classification != "individual":
        company = f"{rng.choice(COMPANY_KINDS)} {last}" if classification == "professional" else f"Mairie de {city}"
    age_days = int(rng.triangular(18 * 365, 75 * 365, 42 * 365))
    return Person(
        customer_id=customer_id,
        first_name=first,
        last_name=last,
        email=f"{ascii_fold(first)}.{ascii_fold(last)}.{index}@{DOMAINS[index % len(DOMAINS)]}",
        phone=f"+33{rng.choice('67')}{(index * 7919 + 1_000_003) % 10**8:08d}",
        birth_date=date.fromordinal(today.toordinal() - age_days),
        postal_code=postal_code,
        city=city,
        line1=f"{rng.randint(1, 120)} {rng.choice(STREETS)}",
        classification=classification,
        company_name=company,
        profession=rng.choice(PROFESSIONS),
    )
