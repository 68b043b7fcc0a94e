"""Wikipedia and Wikidata evidence for the agent, live or from an offline replica.

``make_wiki_client(WikiSettings.from_env(), replica)`` gives a ``WikiClient``: in ``online``
mode the MediaWiki/Wikibase APIs (timeouts, retries with backoff inside a budget, a descriptive
User-Agent, an on-disk response cache), falling back to the replica when a call gives up; in
``offline`` mode (the default) the replica built from a dataset's KB and kb-local's Vital
Articles. ``python -m tools.wiki search QUERY`` tries it from the shell.
"""

from tools.wiki.client import WikiClient, make_wiki_client
from tools.wiki.evidence import Evidence, WikiError
from tools.wiki.fallback import FallbackWikiClient
from tools.wiki.offline import OfflineWikiClient
from tools.wiki.online import OnlineWikiClient
from tools.wiki.replica import OfflineReplica
from tools.wiki.settings import WikiSettings
from tools.wiki.stats import WikiStats

__all__ = [
    "Evidence",
    "FallbackWikiClient",
    "OfflineReplica",
    "OfflineWikiClient",
    "OnlineWikiClient",
    "WikiClient",
    "WikiError",
    "WikiSettings",
    "WikiStats",
    "make_wiki_client",
]
