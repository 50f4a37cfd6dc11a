"""Which language a paragraph is in, for a model whose manifest names the languages it was trained on.

A keep/drop model trained on English alone (thrifty's own) ranks the words of
German or Russian text without knowing them: at half the tokens it kept
"weil über länger dauern" and dropped "Kosten ... zwölf Prozent", the point
of the paragraph, and of a Russian paragraph it kept the first sentence whole
and dropped the second. So with such a model, a paragraph that is clearly in
another language is kept whole, as text in scripts written without spaces is.

The test is the classic one by stop words, on the words the compressor has
already tokenized (each stop word matched by its whole sequence of pieces,
so that words an English vocabulary splits, "już" or "için", count): a
paragraph of at least :data:`MIN_WORDS` words whose words are mostly in a
script other than Latin is in none of the languages below; otherwise it is
in another language when some other list of :data:`STOP_WORDS` (thirty-six
languages) covers at least :data:`MIN_SHARE` of its words and :data:`MARGIN`
times the share the model's own languages' lists cover; or, for a model of
languages written in a-z alone (:data:`UNMARKED`: English), when at least
:data:`MARKED_SHARE` of its words carry a letter beyond a-z and few are the
model's stop words (:data:`MARKED_OWN`) (Vietnamese, Azerbaijani, Icelandic,
Slovak..., whose stop words an English vocabulary reads as English ones once
their accents are stripped: Vietnamese "thể", "cần" are "the", "can"); or,
for a language without a list here and without such letters (Hausa,
Shona...), when it has at least :data:`SPARSE_WORDS` words and the model's
own lists cover less than :data:`SPARSE_SHARE` of them; or when the model's
vocabulary holds few of its longer words whole and its own lists cover few
of its words (:data:`KNOWN_SHARE`: "vercijferd" is five pieces to an English
vocabulary), which tells the short paragraphs of those languages, and of
Dutch, Danish or Afrikaans where their lists share words with English's. A
shorter paragraph, or one that no rule decides (lists of names, identifiers,
headings), is left undecided and compressed as before: a wrong "foreign"
only costs the saving on that paragraph, a wrong "undecided" is what
happened before. Of 9,739 English paragraphs (the training corpus's held-out
and training passages and the evaluation set: ``bench/compression.py
languages``), five are kept whole: a "lorem ipsum" (which is Latin), two
lists of Tk option names and, twice, a terse paragraph of technical English
("WebSocket translation sessions accept base64-encoded 24 kHz PCM16 mono
little-endian raw audio bytes..."), all by the sparse rule (the Latin also
by the vocabulary); none by its letters, none by another language's list (a
citation, "Kautsky et al. ... https://la.epfl.ch/...", came closest,
Italian's list covering twice English's). A paragraph of German, Spanish or
Dutch news prose has a third of its words on its own list and almost none on
English's. The same bench reads the machine's gettext catalogs and man
pages: of their translations it keeps 91.6% (94 languages) and 89.1% (24
languages) whole, and the English it takes for another language (83 of 5,908
help texts, 1,139 of 20,000 man-page paragraphs) is nearly all usage
synopses, option tables and code.

It decides only for models whose languages are all in :data:`STOP_WORDS`;
for others (no languages named, or one this table cannot tell) it says
nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from thrifty.compressors._scripts import in_blocks

__all__ = ["KNOWN_SHARE", "MARGIN", "MARKED_OWN", "MARKED_SHARE", "MIN_SHARE", "MIN_WORDS", "PARAGRAPH_BREAK",
           "SPARSE_SHARE", "SPARSE_WORDS", "STOP_WORDS", "UNKNOWN_LETTERS", "UNKNOWN_OWN", "UNKNOWN_WORDS", "UNMARKED",
           "ParagraphLanguages"]

#: The most frequent short words of each language, as written (the tokenizer's normaliser is applied
#: when they are looked up). Words that most of these languages share ("a", "o"), or that English
#: borrows ("per"), are left out.
STOP_WORDS: dict[str, str] = {
    "en": "the of and to in is that it for was on with as by are this be at from or an not but which have has "
          "were been their its they there will would can these than",
    "de": "der die und das ist nicht ein eine einer den dem des zu mit sich auf für im in von als auch es wird "
          "werden sind wie oder aber bei nach noch nur wurde hat haben durch über",
    "fr": "le la les de des et est un une du que qui dans pour pas sur au aux par avec plus ne sont cette il "
          "elle ce se son sa ses leur mais ou été être en",
    "es": "el la los las de del y que en un una es por con para no se al lo como más pero su sus está son fue "
          "ha muy también entre sin sobre este esta",
    "it": "il lo la gli le di che è e un una non del della dei delle con si da sono al alla come anche ma più "
          "nel nella questo questa in",
    "pt": "o os as de do da dos das que em um uma é e para com não por no na se mais como mas foi ao aos são "
          "também pelo pela seu sua",
    "nl": "de het een en van is dat op te zijn met voor niet aan er die ook als bij door maar om wordt dan "
          "naar uit werd heeft in",
    # more languages, so that paragraphs of them too short for the SPARSE_WORDS rule are told as well;
    # words that are common English once accents are stripped ("for", "men", "till", "care", "volt") are out
    "pl": "nie się jest że na jak po tak jego od przez dla czy już lub oraz są był była było będzie może "
          "tylko także jednak który która które przy tym",
    "cs": "je se na že ve za jsou jako tak podle když také jen už nebo jeho bylo byl může být které který "
          "která aby při jsem si ji jí než mezi již však jsme pouze",
    "sv": "och att det som en på är av med den har inte om ett jag sig kan de så efter eller när bara alla vara "
          "även också ska detta dessa där",
    "da": "og det som er af med ikke den har jeg et på sig om kan vil fra blev eller også en til der de når hvis "
          "skal kun være alle dette disse hvor efter ved blive kunne",
    "nb": "og ikke det som er av med jeg har den om ble seg kan vil fra eller også når etter en til der de hvis "
          "skal kun være alle dette disse hvor ved bli kunne dersom fordi",
    "fi": "ja ei se että oli kun mutta myös joka ovat tai niin kuin jos hän sen tämä ole olla voi sitä joten "
          "kanssa sekä siitä jotka koska nyt jossa jotta vain kaikki voidaan tämän näin mikä sitten vielä tätä "
          "ennen jälkeen",
    "tr": "ve bir bu da için ile olarak daha çok gibi kadar ama olan ne değil sonra şey ya veya",
    "id": "yang dan di ini itu dengan untuk tidak dari dalam akan pada juga ke karena ada oleh sudah saya "
          "mereka bisa atau",
    "ro": "și de la cu pe nu este mai din pentru sau sunt fost au ce fi să prin",
    "hu": "az és hogy nem egy van meg ez azt ki már csak mert vagy még kell ezért után pedig lesz nagyon sok "
          "több amely amit aki között így",
    "hr": "je se na da za su od ne što kao ali iz bi sa ili će nije koji koja koje samo jer još već kada biti "
          "bila može prema nakon",
    "sl": "je se na da za ki ne tudi bi ali kot od iz še že ker bo sem smo lahko vendar zato več kar ter pri",
    "lt": "ir yra kad bet su ne nes kaip jau tai buvo jo jos tik dar apie arba kuris kuri taip todėl kai nuo "
          "prie labai jie",
    "lv": "un ir ka uz bet kas tā vai arī jau tikai nav bija pēc kā jo tas lai tiek vairs kad vēl tāpēc",
    "et": "ja ei ka kui oli aga mis nii või siis kes veel seda mida ning kuid pole üle oma olla selle sest enam "
          "nad kõik vaid juba ta kas kuidas mitte ainult pärast enne kõige",
    "tl": "ang ng sa na ay mga ako hindi ito siya niya kung din rin nang mas pero kay ni naman lahat",
    "sw": "na ya wa kwa za ni katika hii huo kama lakini pia hata sana baada kwamba ili hiyo yake wake cha",
    "eu": "eta da ez du ere baina dira izan hau bere dute egin behar gehiago oso beste dela zuen",
    "ms": "yang dan di ini itu dengan untuk tidak dari dalam akan pada juga ke kerana ada oleh telah boleh ia "
          "bahawa mereka atau lebih",
    "af": "nie vir wat ons hulle sal ook deur het dit daar hierdie baie moet nog",
    "cy": "yn yr mae gyda fel wedi bod ond hefyd hyn sydd oedd neu",
    "gd": "agus ann tha bha gu ri seo nach",
    "ga": "agus ach freisin bhí nach seo ag",
    "mg": "ny sy ary dia tsy izay amin",
    # Bantu languages and Somali, written in a-z alone: their function words are mostly joined to the word
    # they govern, so these lists are of the free-standing ones (conjunctions, demonstratives, "if", "when")
    "xh": "ukuba ngaba nokuba okanye kwaye kodwa xa apho kuba ngoko ngoku kakhulu kuphela kwi kule kulo ezi esi "
          "eli ukuze ngenxa akukho ayikwazi mhlawumbi phakathi emva phambi yonke zonke konke",
    "zu": "futhi kodwa uma noma ukuthi ngoba lapho kanye kakhulu kuphela manje lokho lokhu ukuze ngakho khona yini "
          "kufanele ngemva phakathi akukho ayikwazi ngokuthi nje",
    "so": "iyo waa ayaa waxaa waxay wuxuu waxa sida kale kasta markii haddii laakiin ugu lagu loo kala inuu inay "
          "kuwa tahay yahay ahaa jira badan aad uga ayuu ayay isla ka ku",
    "nso": "gore goba bakeng bjalo gona yeo seo leo tšeo ga ge bja tša tše eba",
    "lg": "mu ku nga oba bwe nti kino buli kya ekyo naye kubanga okuba",
}

#: Languages whose prose is written in the unmarked letters a-z alone. For a model trained only on them, a
#: paragraph whose words often carry letters beyond those (Vietnamese, Azerbaijani, Icelandic...) is in
#: another language whatever its stop words: see :data:`MARKED_SHARE`.
UNMARKED = frozenset({"en", "id", "ms", "sw", "tl", "eu", "xh", "zu", "so", "lg"})

#: Fewest letter words in a paragraph for a decision.
MIN_WORDS = 12
#: Least share of a paragraph's Latin-script words that its language's stop words must cover.
MIN_SHARE = 0.15
#: How many times the share of the model's own languages' stop words (the best of them) another
#: language's share must be.
MARGIN = 4.0
#: A paragraph of at least :data:`SPARSE_WORDS` Latin-script words of which the model's own languages'
#: stop words cover less than this share is in none of them, whichever language it is in (one without a
#: list here: Hausa, Shona, Kinyarwanda...): English prose covers 12% or more in 99 paragraphs of 100.
SPARSE_SHARE = 0.03
SPARSE_WORDS = 20
#: For a model of :data:`UNMARKED` languages only, the least share of a paragraph's Latin-script words with a
#: letter beyond a-z (an accent, or a letter such as "ơ", "ə" or "þ") for it to be in another language: of
#: 9,739 English paragraphs the most had 8.7% ("Ondřej Čertík stepped down as lead developer..."), of 19,653
#: of the English man pages 4.2%, of 5,791 English help texts none (``bench/compression.py languages``); a
#: Vietnamese sentence has 80% or more, Slovak, Icelandic or Azerbaijani a third or more, German or Finnish
#: often 20%.
MARKED_SHARE = 0.2
#: ... and the model's own stop words must cover less than this share of its words, as they do in under 1 in
#: 100 English paragraphs, so that English thick with loanwords and names ("crème fraîche, jalapeño and
#: piña colada", "Müller scored twice, Gündoğan added a third") stays English; Vietnamese, whose words an
#: English vocabulary reads as "the", "can" or "an" once their accents are stripped, has 5-10%.
MARKED_OWN = 0.12
#: A paragraph with at least :data:`UNKNOWN_WORDS` Latin-script words of :data:`UNKNOWN_LETTERS` characters
#: or more, of which the model's vocabulary holds less than :data:`KNOWN_SHARE` as one piece each, is in
#: another language when the model's own stop words cover less than :data:`UNKNOWN_OWN` of its words. A
#: vocabulary is built from its model's languages: thrifty's English one holds more than half of the longer
#: words whole in 99 of 100 paragraphs of its English corpus and more than 40% in 99 of 100 of the English
#: help texts and man pages (usage synopses and identifier lists are the lowest), but in half the Dutch,
#: Danish or Afrikaans help texts a tenth or less, in half the Welsh or Xhosa none ("De stroom is vercijferd
#: en kan niet worden ontcijferd": "vercijferd" is "ve", "##rc", "##ij", "##fer", "##d"). It tells the short
#: paragraphs of a language whose list shares common words with English's ("is", "in", "for", "at"), where
#: the margin cannot, and of one with neither a list nor marked letters (Hausa, Shona, Kinyarwanda).
UNKNOWN_LETTERS = 4
UNKNOWN_WORDS = 6
KNOWN_SHARE = 0.2
UNKNOWN_OWN = 0.15
#: Most pieces of a stop word as the tokenizer splits it.
_MAX_PIECES = 3

#: Where one paragraph ends and the next begins: a line with nothing but spaces on it.
PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")


class ParagraphLanguages:
    """Finds the paragraphs of a text in none of a model's languages, from its tokenized words.

    ``encode`` gives the model's piece ids of one word (its tokenizer, normaliser included), ``size`` the
    size of its vocabulary. A stop word is looked up by its whole piece sequence, so words the tokenizer
    splits ("już" is "ju" "##z" to an English vocabulary) count as well; a word of more than
    :data:`_MAX_PIECES` pieces is no stop word. Build one per loaded model; :meth:`foreign` is vectorised.
    """

    def __init__(self, languages: frozenset[str], encode: Callable[[str], Sequence[int]], size: int) -> None:
        names = sorted(STOP_WORDS)
        self.active = bool(languages) and languages <= set(names)
        self._base = size + 1  # piece id + 1 per digit, 0 for no piece
        bits: dict[int, int] = {}  # word key -> bit k: a stop word of names[k]
        for k, name in enumerate(names):
            for word in STOP_WORDS[name].split():
                pieces = list(encode(word))
                if 0 < len(pieces) <= _MAX_PIECES:
                    key = int(self._key(*(np.array([p]) for p in pieces))[0])
                    bits[key] = bits.get(key, 0) | 1 << k
        keys = sorted(bits)
        self._keys = np.array(keys, dtype=np.int64)
        self._bits = np.array([bits[key] for key in keys], dtype=np.int64)
        self._names = names
        self._own = [k for k, name in enumerate(names) if name in languages]
        self._unmarked = languages <= UNMARKED

    def _key(self, *pieces: np.ndarray) -> np.ndarray:
        """One integer per word from its first pieces' ids (each -1 where the word has no such piece)."""
        key = np.zeros(len(pieces[0]), dtype=np.int64)
        for i in range(_MAX_PIECES):
            key = key * self._base + (pieces[i] + 1 if i < len(pieces) else 0)
        return key

    def _stop_bits(self, ids: np.ndarray, first: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Per word, the bits of the languages it is a stop word of."""
        if not len(self._keys):
            return np.zeros(len(first), dtype=np.int64)
        last = len(ids) - 1
        pieces = [np.where(counts > i, ids[np.minimum(first + i, last)], -1) for i in range(_MAX_PIECES)]
        key = self._key(*pieces)
        at = np.minimum(np.searchsorted(self._keys, key), len(self._keys) - 1)
        return np.where((self._keys[at] == key) & (counts <= _MAX_PIECES), self._bits[at], 0)

    def foreign(self, text: str, points: np.ndarray, ids: np.ndarray, first: np.ndarray, counts: np.ndarray,
                starts: np.ndarray, ends: np.ndarray) -> list[tuple[int, int]]:
        """Character spans of the paragraphs in none of the model's languages.

        ``points`` are the text's code points (:func:`~thrifty.compressors._scripts.code_points`), ``ids``
        its piece ids, ``first`` each word's first piece among them and ``counts`` its number of pieces,
        ``starts``/``ends`` the words' character spans.
        """
        if not self.active or len(starts) < MIN_WORDS:
            return []
        codes = points[starts]
        lower = codes | 0x20
        latin = ((lower >= 0x61) & (lower <= 0x7A)) | in_blocks(codes, _MARKED_RANGES)
        symbol = in_blocks(codes, _SYMBOL_RANGES)
        other = (codes >= 0x370) & ~latin & ~symbol
        breaks = np.array([m.end() for m in PARAGRAPH_BREAK.finditer(text)], dtype=np.int64)
        paragraph = np.searchsorted(breaks, starts, side="right")
        count = len(breaks) + 1
        n_latin = np.bincount(paragraph, weights=latin, minlength=count)
        n_other = np.bincount(paragraph, weights=other, minlength=count)
        n_marked = np.zeros(count)
        if self._unmarked:  # the marked letters, placed in their words
            at = np.flatnonzero(points >= _MARKED_RANGES[0][0])
            at = at[in_blocks(points[at], _MARKED_RANGES)]
            word = np.searchsorted(starts, at, side="right") - 1
            word = word[(word >= 0) & (at < ends[np.maximum(word, 0)])]
            marked = np.zeros(len(starts), dtype=bool)
            marked[word] = True
            n_marked = np.bincount(paragraph, weights=marked & latin, minlength=count)
        longer = latin & (ends - starts >= UNKNOWN_LETTERS)  # the words the vocabulary holds whole, of these
        n_longer = np.bincount(paragraph, weights=longer, minlength=count)
        n_known = np.bincount(paragraph, weights=longer & (counts == 1), minlength=count)
        bits = np.where(latin, self._stop_bits(ids, first, counts), 0)
        hit = np.flatnonzero(bits)  # the stop words, counted per paragraph and language in one pass
        langs = len(self._names)
        on = (bits[hit, None] >> np.arange(langs)) & 1
        cells = (np.arange(langs) * count + paragraph[hit, None]).ravel()
        shares = np.bincount(cells, weights=on.ravel(), minlength=langs * count).reshape(langs, count) / np.maximum(
            n_latin, 1)  # not in place: with no stop word at all, bincount counts in integers
        top, own = shares.max(axis=0), shares[self._own].max(axis=0)
        decided = (n_latin + n_other >= MIN_WORDS)
        foreign = decided & ((n_other > n_latin) | ((top >= MIN_SHARE) & (top >= MARGIN * own))
                             | ((n_latin >= SPARSE_WORDS) & (own < SPARSE_SHARE))
                             | ((n_marked > 0) & (n_marked >= MARKED_SHARE * n_latin) & (own < MARKED_OWN))
                             | ((n_longer >= UNKNOWN_WORDS) & (n_known < KNOWN_SHARE * n_longer) & (own < UNKNOWN_OWN)))
        if not foreign.any():
            return []
        bounds = np.searchsorted(paragraph, np.arange(count + 1), side="left")
        return [(int(starts[bounds[p]]), int(ends[bounds[p + 1] - 1])) for p in np.flatnonzero(foreign)
                if bounds[p + 1] > bounds[p]]


#: Punctuation, symbols and emoji above U+0370, which are no script's words: general punctuation to the
#: miscellaneous symbols and arrows, the CJK symbols, variation selectors to the specials, and the emoji planes.
_SYMBOL_RANGES = ((0x2000, 0x2BFF), (0x3000, 0x303F), (0xFE00, 0xFFFF), (0x1F000, 0x10FFFF))
#: The Latin letters beyond a-z, as code point ranges: Latin-1's letters, Latin Extended-A and -B, and
#: Latin Extended Additional (Vietnamese's stacked accents).
_MARKED_RANGES = ((0xC0, 0xD6), (0xD8, 0xF6), (0xF8, 0x24F), (0x1E00, 0x1EFF))
