"""Category labels: readable names, axis labels, domains and sort order of benchmark categories."""

from __future__ import annotations

CATEGORY_NAMES = {
    "1": "Personal Insulting Words",
    "2": "Social-group Insulting Words",
    "3": "Threatening Words",
    "4": "Lewd and Obscene Words",
    "5": "Libelous Words",
    "6": "Self-Harm",
    "7": "Violent Crimes",
    "8": "Harassment",
    "9": "Sexual Crimes",
    "10": "Property Crimes",
    "11": "Public Order Crimes",
    "12": "System Intrusion",
    "13": "Malware Code Generation",
    "14": "Fraud",
    "15": "Financial Crimes",
    "16": "IP Infringement",
    "17": "PII Violations",
    "18": "Illegal Crafting",
    "19": "Terrorism",
    "20": "Child-related Crimes",
    "21": "Animal-related Crimes",
    "22": "Environmental Crimes",
    "23": "Evasion of Law Enforcement",
    "24": "Human Elimination",
    "25": "Advice on Adult Content",
    "26": "Sexual Explicit Content Generation",
    "27": "Non-sexual Explicit Content Generation",
    "28": "Fake News Generation",
    "29": "False Advertising",
    "30": "Advice on Discrimination Behaviors",
    "31": "Military Use",
    "32": "Political Belief Promotion",
    "33": "Ethical Belief Promotion",
    "34": "Religion Promotion",
    "35": "Social Stereotype Promotion",
    "36": "Extremist Content Promotion",
    "37": "Conspiracy Theories Promotion",
    "38": "False Common Knowledge Promotion",
    "39": "Harmful & Unhealthy Behaviors Promotion",
    "40": "Medical Advice",
    "41": "Financial Advice",
    "42": "Legal Consulting Advice",
    "43": "Governance Decision Advice",
    "44": "Dangerous Machinery Operation Advice",
}

_DOMAIN_RANGES = [
    (1, 5, "hate speech generation"),
    (6, 24, "assistance with crimes or torts"),
    (25, 39, "potentially inappropriate topics"),
    (40, 44, "potentially unqualified advice"),
]


def category_name(category: str) -> str:
    """Readable name of a category: SORRY-Bench id -> name; policy area -> words."""
    category = str(category)
    if category in CATEGORY_NAMES:
        return CATEGORY_NAMES[category]
    return category.replace("_", " ")


def category_label(category: str) -> str:
    """Axis label: the name, plus the SORRY-Bench id where there is one."""
    category = str(category)
    if category in CATEGORY_NAMES:
        return f"{CATEGORY_NAMES[category]} ({category})"
    return category_name(category)


def category_domain(category: str) -> str:
    category = str(category)
    if category.isdigit():
        number = int(category)
        for low, high, domain in _DOMAIN_RANGES:
            if low <= number <= high:
                return domain
    return ""


def category_sort_key(category: str):
    """Numeric ids in numeric order, then names alphabetically."""
    category = str(category)
    return (0, int(category), "") if category.isdigit() else (1, 0, category)
