"""URL filtering before download: blacklisted domains, non-text file extensions, duplicates,
and URLs too short to be real pages. Each URL is dropped for the first reason that applies,
in that order (malformed, too short, domain, extension, duplicate), and counted under it.
"""
import collections
import os
from typing import Dict, Iterable, Iterator, List, Optional, Set, Tuple
from urllib.parse import urlsplit

from .jsonl import WebtextError

# Hosts whose pages are images, video, audio, social feeds or link shorteners: no prose to train on.
# A domain matches itself and every subdomain (``i.imgur.com`` matches ``imgur.com``).
DEFAULT_DOMAIN_BLACKLIST = frozenset("""
500px.com bandcamp.com bit.ly dailymotion.com deviantart.com discord.com discord.gg dropbox.com
facebook.com fb.com flickr.com gfycat.com giphy.com goo.gl imageshack.us imgflip.com imgur.com
instagram.com linkedin.com liveleak.com mixcloud.com photobucket.com pinterest.com pornhub.com
redd.it reddit.com snapchat.com soundcloud.com spotify.com streamable.com t.co t.me tiktok.com
tinypic.com tinyurl.com tumblr.com twitch.tv twitter.com vimeo.com vine.co x.com xvideos.com
youtu.be youtube.com
""".split())

# Extensions of files that are not HTML text (images, media, archives, binaries, office files).
DEFAULT_EXTENSION_BLACKLIST = frozenset("""
7z apk avi bin bmp bz2 csv deb dmg doc docx eps exe flac flv gif gz ico iso jar jpeg jpg m4a m4v
mid midi mkv mov mp3 mp4 mpeg mpg msi odp ods odt ogg pdf png ppt pptx psd rar rpm svg swf tar
tgz tif tiff ttf wav webm webp wma wmv woff woff2 xls xlsx xz zip
""".split())

REASONS = ("malformed", "too_short", "domain", "extension", "duplicate")


class UrlFilter:
    def __init__(self, domains: Iterable[str] = DEFAULT_DOMAIN_BLACKLIST,
                 extensions: Iterable[str] = DEFAULT_EXTENSION_BLACKLIST, min_length: int = 8):
        self.domains = {d.lower().strip(".") for d in domains}
        self.extensions = {e.lower().lstrip(".") for e in extensions}
        self.min_length = min_length
        self.seen: Set[str] = set()
        self.counts: Dict[str, int] = collections.Counter({reason: 0 for reason in REASONS})

    def _domain_listed(self, host: str) -> bool:
        parts = host.split(".")
        return any(".".join(parts[i:]) in self.domains for i in range(len(parts)))

    def reason(self, url: str) -> Optional[str]:
        """Why ``url`` is dropped, or None to keep it (and remember it, for duplicates)."""
        if len(url) < self.min_length:
            return "too_short"
        try:
            parts = urlsplit(url if "://" in url else "http://" + url)
            host = (parts.hostname or "").lower()
        except ValueError:
            return "malformed"
        tld = host.rsplit(".", 1)[-1]
        # A host needs a dot and a top-level domain of two or more letters (or be an IPv4 address).
        if " " in url or "." not in host or not ((len(tld) >= 2 and tld.isalpha()) or host.replace(".", "").isdigit()):
            return "malformed"
        if host.startswith("www."):
            host = host[4:]
        if self._domain_listed(host):
            return "domain"
        last = parts.path.rsplit("/", 1)[-1]
        if "." in last and last.rsplit(".", 1)[-1].lower() in self.extensions:
            return "extension"
        # Duplicates differ only in scheme, "www.", letter case of the host or a trailing slash.
        key = host + parts.path.rstrip("/") + ("?" + parts.query if parts.query else "")
        if key in self.seen:
            return "duplicate"
        self.seen.add(key)
        return None

    def filter(self, urls: Iterable[str]) -> Iterator[str]:
        for url in urls:
            why = self.reason(url)
            if why is None:
                self.counts["kept"] += 1
                yield url
            else:
                self.counts[why] += 1


def read_word_list(path: str) -> List[str]:
    """One entry per line; blank lines and ``#`` comments are ignored."""
    try:
        with open(path, encoding="utf-8") as handle:
            return [w.strip() for w in handle if w.strip() and not w.lstrip().startswith("#")]
    except (OSError, UnicodeDecodeError) as error:
        raise WebtextError(f"{path}: cannot read: {error}") from None


def url_files(url_dir: str) -> List[str]:
    """Every regular file directly in ``url_dir`` (or ``url_dir`` itself), in sorted order."""
    if os.path.isfile(url_dir):
        return [url_dir]
    if not os.path.isdir(url_dir):
        raise WebtextError(f"{url_dir}: no such directory")
    files = sorted(os.path.join(url_dir, n) for n in os.listdir(url_dir)
                   if not n.startswith(".") and os.path.isfile(os.path.join(url_dir, n)))
    if not files:
        raise WebtextError(f"{url_dir}: no URL files in the directory")
    return files


def read_urls(paths: Iterable[str]) -> Iterator[Tuple[str, int, str]]:
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="strict") as handle:
                for number, line in enumerate(handle, 1):
                    url = line.strip()
                    if url:
                        yield path, number, url
        except UnicodeDecodeError as error:
            raise WebtextError(f"{path}: not UTF-8 ({error.reason} at byte {error.start})") from None
