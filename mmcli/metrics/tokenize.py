"""Pure-Python re-implementation of pycocoevalcap's PTB tokenization.

pycocoevalcap (the COCO caption evaluation) tokenizes every caption with the
Stanford CoreNLP 3.4.1 ``PTBTokenizer`` run as::

    java edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase FILE

and then deletes every output token that is exactly one of::

    ''  '  ``  `  -LRB-  -RRB-  -LCB-  -RCB-  .  ?  !  ,  :  -  --  ...  ;

Because the tokens were lowercased first, the four upper-case entries never
match: the bracket escapes ``-lrb- -rrb- -lsb- -rsb- -lcb- -rcb-`` survive, and
so do multi-character punctuation tokens such as ``?!`` or ``!!!``.

This module reproduces that pipeline without Java (stdlib ``re`` only).

How the Java lexer works, and how it is emulated here
------------------------------------------------------
The Java tokenizer is a JFlex scanner: at each position every rule is tried,
the *longest* match wins and ties go to the earlier rule. A rule may have a
"trailing context" (``rule/context``): the context counts towards the match
length but is not part of the token. :func:`_lex` does the same with one
compiled regex per rule alternative (candidates are pre-selected by the first
character). The rules, in priority order, are listed in ``_RULES``; the main
ones are:

* words: letters and digits with inner ``.``/``!``/``?`` (``hello.world``,
  ``a1.b2``); clitics are split off (``do n't``, ``ca n't``, ``i 'm``,
  ``man 's``) and ``cannot gonna gotta gimme lemme wanna 'tis 'twas`` are cut
  in two (``can not``, ``gon na``, ``'t is``);
* apostrophe words kept whole (``o'clock``, ``rock 'n' roll``, ``y' all``,
  ``'90s``);
* hyphenated words, slash words and numbers stay one token (``e-mail``,
  ``50-year-old``, ``red/white/blue``, ``3.5``, ``1,000``, ``10:30``,
  ``12/25/2014``); ``5 7/8`` and phone numbers keep their space as U+00A0;
* abbreviations keep their period (``mr.``, ``u.s.``, ``etc.``, ``a.``; ``no.``
  only before a number); any other final period is its own token;
* URLs, e-mail addresses, ``@user``, ``#tag``, SGML tags (``<b>``, spaces in
  them become U+00A0), smileys (``:-rrb-``);
* escapes: ``( ) [ ] { }`` become ``-lrb- -rrb- -lsb- -rsb- -lcb- -rcb-``;
  ``"``, curly quotes, ``« »`` become PTB quotes; ``-- — –`` and ``&mdash;``
  become ``--``; ``...`` and ``…`` become ``...``; ``&amp; &quot; &lt; &gt;``
  are decoded; ``€ £ ¢`` become ``$ # cents``; ``½`` becomes ``1/2``; a soft
  hyphen U+00AD disappears; no British-to-American respelling;
* every other symbol is a one-character token (``$ % & # @ * / ~ ^ | = +``),
  except characters the Java lexer does not know (e.g. characters outside the
  Basic Multilingual Plane such as emoji, ``‒``), which are dropped and act as
  a separator.

Batches. The Java tokenizer reads all captions of one pycocoevalcap call as
one text, one caption per line, so a few results depend on the neighbours, and
:func:`ptb_tokenize_batch` reproduces that: a caption ending in a one-letter
abbreviation looks at how the next caption starts ("Wii U." before "A dog"
gives ``wii u``, before "the dog" ``wii u.``; likewise "no." before "5 ..."),
and the last caption is followed by end-of-file (which changes endings such as
``:)``, ``'ve`` or ``2.jpg``). :func:`ptb_tokenize` tokenizes a caption as if
it stood inside a batch, followed by a newline.

Speed: results are cached per caption. Captions made of ASCII letters,
spaces, commas and a final period (almost all COCO captions) are handled with
string methods; other ASCII captions in which no token can span a space are
split on whitespace and each distinct chunk is lexed once (cached); only the
rest runs the regex lexer on the whole caption.

Deliberate difference from the Java pipeline
--------------------------------------------
Line breaks. pycocoevalcap replaces only ``"\\n"`` by a space before writing
one caption per line. The Java lexer also ends a line at ``"\\r"``, VT
``"\\x0b"``, FF ``"\\x0c"``, U+2028 and U+2029, so a caption containing one of
these is cut in two and *every later caption is silently shifted onto the
wrong image*. Here ``\\n \\r \\x0b \\x0c \\x1c \\x1d \\x1e`` U+0085 U+2028 U+2029
(every character Python's ``str.splitlines`` breaks on) are all replaced by a
space first, so ``ptb_tokenize_batch`` always returns exactly one string per
input caption, in order. (U+0085 and U+001C-U+001E are dropped by Java anyway,
which also separates tokens.)

Known remaining differences
---------------------------
The rules were rebuilt from the jar's behaviour and CoreNLP's documentation
and published lexer sources (read, not copied), and checked against the jar:
all nine COCO files in ``shared/data/coco-captions`` agree caption for
caption, every BMP character agrees in eight contexts, and over 150,000
random strings built from tricky fragments agree. What is known to differ:

* Lowercasing is Python's ``str.lower()``; Java uses its own
  ``toLowerCase`` from the JVM that runs the jar. They disagree on a Greek
  capital sigma in a few positions (``"Σ-Σ"`` gives ``σ-ς`` in Java) and on
  characters newer than that JVM's Unicode tables (kept inside a URL or e-mail).
* Letters and digits are today's Unicode (Python's database) minus those the
  jar does not know, measured with Python 3.11 (Unicode 14). A Python with a
  newer Unicode database treats the few letters added since as letters; the
  jar drops them.
"""

from __future__ import annotations

import re
import sys

__all__ = ["TOKENIZER_SIGNATURE", "ptb_tokenize", "ptb_tokenize_batch"]

#: Names this tokenizer in score signatures (CoreNLP 3.4.1 PTB rules, Python port).
TOKENIZER_SIGNATURE = "ptb-3.4.1-py"

# Tokens pycocoevalcap deletes after tokenization (exact, case-sensitive match
# against the lowercased tokens, so the upper-case bracket escapes never match).
_PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
     ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

# Every character that Python treats as a line boundary (str.splitlines) becomes
# a space, so one caption always gives one result (see the module docstring).
_LINEBREAKS = {ord(c): " " for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


# ---------------------------------------------------------------------------
# Character classes (bodies, to be put inside [...])
# ---------------------------------------------------------------------------

# Characters that are not letters but that the jar accepts inside words
# anyway: the soft hyphen (removed from the token afterwards), some modifier
# symbols and many combining marks (Latin, Greek, Cyrillic, Armenian, Hebrew,
# Arabic, Syriac, Thaana, N'Ko, Indic, Thai, Lao scripts). Measured by running
# every BMP character through the jar.
_EXTRA_LETTER_RANGES = [
    (0x00AD, 0x00AD), (0x02C2, 0x02C5), (0x02D2, 0x02DF), (0x02E5, 0x02EB), (0x02ED, 0x02ED),
    (0x02EF, 0x036F), (0x0375, 0x0375), (0x0378, 0x0379), (0x0384, 0x0385), (0x03F6, 0x03F6),
    (0x0483, 0x0487), (0x055A, 0x055F), (0x0591, 0x05BD), (0x05BF, 0x05BF), (0x05C1, 0x05C2),
    (0x05C4, 0x05C5), (0x05C7, 0x05C7), (0x0615, 0x061A), (0x064B, 0x065E), (0x0670, 0x0670),
    (0x06D6, 0x06E4), (0x06E7, 0x06ED), (0x06FD, 0x06FE), (0x070F, 0x070F), (0x0711, 0x0711),
    (0x0730, 0x074C), (0x07A6, 0x07B0), (0x07EB, 0x07F3), (0x0900, 0x0903), (0x093C, 0x093C),
    (0x093E, 0x094E), (0x0951, 0x0955), (0x0962, 0x0963), (0x0981, 0x0983), (0x09BC, 0x09BC),
    (0x09BE, 0x09C4), (0x09C7, 0x09C8), (0x09CB, 0x09CD), (0x09D7, 0x09D7), (0x09E2, 0x09E3),
    (0x0A01, 0x0A03), (0x0A3C, 0x0A3C), (0x0A3E, 0x0A4F), (0x0A81, 0x0A83), (0x0ABC, 0x0ABC),
    (0x0ABE, 0x0ACF), (0x0B82, 0x0B82), (0x0BBE, 0x0BC2), (0x0BC6, 0x0BC8), (0x0BCA, 0x0BCD),
    (0x0C01, 0x0C03), (0x0C3E, 0x0C56), (0x0D3E, 0x0D44), (0x0D46, 0x0D48), (0x0E31, 0x0E31),
    (0x0E34, 0x0E3A), (0x0E47, 0x0E4E), (0x0EB1, 0x0EB1), (0x0EB4, 0x0EBC), (0x0EC8, 0x0ECD),
]


_EXTRA = "".join(f"\\u{lo:04x}-\\u{hi:04x}" for lo, hi in _EXTRA_LETTER_RANGES)

# Letters and digits of today's Unicode that the jar's tables (built with an
# older Java, about Unicode 6.1) do not know: the jar drops them like any
# unknown character. Measured by running every BMP character through the jar.
_JAVA_UNKNOWN = (
    "\\u037f\\u0528-\\u052f\\u0560\\u0588\\u05ef\\u0860-\\u086a\\u0870-\\u0887"
    "\\u0889-\\u088e\\u08a1\\u08ad-\\u08c9\\u0978\\u0980\\u09fc\\u0af9\\u0c34\\u0c5a"
    "\\u0c5d\\u0c80\\u0cdd\\u0d04\\u0d54-\\u0d56\\u0d5f\\u0de6-\\u0def\\u0e86\\u0e89"
    "\\u0e8c\\u0e8e-\\u0e93\\u0e98\\u0ea0\\u0ea8-\\u0ea9\\u0eac\\u13f5\\u13f8-\\u13fd"
    "\\u16f1-\\u16f8\\u170d\\u171f\\u1878\\u191d-\\u191e\\u19b0-\\u19c0\\u19c8-\\u19c9"
    "\\u1b4c\\u1c80-\\u1c88\\u1c90-\\u1cba\\u1cbd-\\u1cbf\\u1cf2-\\u1cf3\\u1cfa\\u2c2f"
    "\\u2c5f\\u312e-\\u312f\\u31bb-\\u31bf\\u4db6-\\u4dbf\\u9fcd-\\u9fff\\ua698-\\ua69d"
    "\\ua78f\\ua794-\\ua79f\\ua7ab-\\ua7ca\\ua7d0-\\ua7d1\\ua7d3\\ua7d5-\\ua7d9"
    "\\ua7f2-\\ua7f7\\ua8fd-\\ua8fe\\ua9e0-\\ua9e4\\ua9e6-\\ua9fe\\uaa7e-\\uaa7f"
    "\\uab30-\\uab5a\\uab5c-\\uab69\\uab70-\\uabbf"
)

# Java's [:letter:] is Character.isLetter (categories Lu Ll Lt Lm Lo) and the
# jar only sees the BMP (other characters arrive as two unknown surrogates).
# Python's [^\W\d_] is "letter or other numeric"; taking out the numeric
# categories Nl and No, the letters the jar does not know and everything beyond
# the BMP leaves the jar's letters. (A negated class compiles far faster than a
# list of all letters.)
_NOT_LETTER = (  # categories Nl and No in the BMP (Unicode 14)
    "\\u00b2-\\u00b3\\u00b9\\u00bc-\\u00be\\u09f4-\\u09f9\\u0b72-\\u0b77\\u0bf0-\\u0bf2\\u0c78-\\u0c7e"
    "\\u0d58-\\u0d5e\\u0d70-\\u0d78\\u0f2a-\\u0f33\\u1369-\\u137c\\u16ee-\\u16f0\\u17f0-\\u17f9\\u19da"
    "\\u2070\\u2074-\\u2079\\u2080-\\u2089\\u2150-\\u2182\\u2185-\\u2189\\u2460-\\u249b\\u24ea-\\u24ff"
    "\\u2776-\\u2793\\u2cfd\\u3007\\u3021-\\u3029\\u3038-\\u303a\\u3192-\\u3195\\u3220-\\u3229"
    "\\u3248-\\u324f\\u3251-\\u325f\\u3280-\\u3289\\u32b1-\\u32bf\\ua6e6-\\ua6ef\\ua830-\\ua835"
    + _JAVA_UNKNOWN + "\\U00010000-\\U0010ffff"
)
# Regex atoms (U+1885/U+1886 are Mongolian letters in the jar, marks today):
_PLA = f"(?:[^\\W\\d_{_NOT_LETTER}]|[\u1885\u1886])"   # [:letter:]
_ALNUMA = f"(?:[^\\W_{_NOT_LETTER}]|[\u1885\u1886])"     # [:letter:] or [:digit:]
_WLA = f"(?:{_PLA}|[{_EXTRA}])"                   # letters inside words
_WLDA = f"(?:{_ALNUMA}|[{_EXTRA}])"               # ... or digits
# Java's [:digit:] is category Nd, which is also what \d means in a Python str
# pattern (minus the digits the jar does not know).
_D = f"[^\\D{_JAVA_UNKNOWN}\\U00010000-\\U0010ffff]"
# First-character tests for the rule dispatch (over-inclusive is fine).
_FIRST_WORD = f"(?:[^\\W\\d_]|[&\u1885\u1886{_EXTRA}])"
_FIRST_ALNUM = "(?:[^\\W_]|[\u1885\u1886])"

# ---------------------------------------------------------------------------
# Macros (Python regex fragments).  JFlex's %caseless option makes *literal
# strings* case-insensitive but not character classes, hence the (?i:...)
# around literals and the explicit (case-sensitive) classes.
# ---------------------------------------------------------------------------

_SPACE = " \t\u00a0\u2000-\u200a\u3000"                  # SPACE class body
_NLCHARS = "\r\n\u2028\u2029\x0b\x0c\x85"
_SPACENL = f"[{_SPACE}{_NLCHARS}]"

# &eacute; &Agrave; &ouml; ... are letters inside words.
_SPLET = r"&[aeiouAEIOU](?i:acute|grave|uml);"
_LETTER = f"(?:{_WLA}|{_SPLET})"
_LETDIG = f"(?:{_WLDA}|{_SPLET})"
# A word: letters and digits (starting with a letter), with inner . ! ? between
# letters ("hello.world", "a1.b2").
_WORD = f"{_LETTER}{_LETDIG}*(?:[.!?]{_LETTER}{_LETDIG}*)*"

_APOS = r"(?:['\u0092\u2019]|(?i:&apos;))"
_APOSETC = r"(?:['\u0092\u2019`\u0091\u2018\u201b]|(?i:&apos;))"
# 's 'm 'd 're 've 'll
_REDAUX = f"{_APOS}(?:[msdMSD]|(?i:re|ve|ll))"
# n't, and the word before it (which must not end in n)
_SWORD = r"[A-Za-z\u00ad]*[A-MO-Za-mo-z]\u00ad*"
_SREDAUX = f"(?i:n){_APOSETC}(?i:t)"

_NUM = f"{_D}*(?:[.:,\u00ad\u066b\u066c]{_D}+)+|{_D}+"   # 3.5  1,000  10:30  .5  42
_NUMBER = f"[-+]?(?:{_NUM})"

_HYPHEN = r"[-_\u058a\u2010\u2011]"
# Hyphenated words of letters/digits, optionally with d'/o'/l' elisions.
_THING_PART = f"(?:[dDoOlL]{_APOSETC}{_ALNUMA})?{_ALNUMA}+"
_THING = f"{_THING_PART}(?:{_HYPHEN}{_THING_PART})*"
_THINGA = r"[A-Z]+(?:(?:[+&]|(?i:&amp;))[A-Z]+)+"          # AT&T  S&P  A+B
# Slash words: red/white/blue, 1/2/3, a/b-c (at most three parts).
_THING3 = r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"
# Acronyms; the long special forms come first so that they win over the
# generic letter.letter form they start with.
_ACRO = (r"(?:(?i:U\.S\.-(?:U\.K|U\.S\.S\.R))"
         r"|(?i:(?:Canada|Sino|Korean|EU|Japan|non)-U\.S)"
         r"|[A-Za-z](?:\.[A-Za-z])+)")
# Hyphenated words that may contain . and , (3.5-inch, U.S.-based, co-op).
_HTHING = f"[A-Za-z0-9][A-Za-z0-9.,\u00ad]*(?:-(?:{_ACRO}\\.|[A-Za-z0-9\u00ad]+))+"

# Abbreviations.  Some state names are case-sensitive on their first letter
# (written [M]ass in the Java source) so that "mass." or "ill." end a sentence.
_ABMONTH = "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept|Sep|Oct|Nov|Dec"
_ABDAYS = "Mon|Tues|Tue|Wed|Thurs|Thu|Fri"
_ABSTATE_CI = ("Ala|Ariz|Calif|Colo|Conn|Ct|Dak|Fla|Ga|Ind|Kans|Kan|Ky|Md|Mich|Minn|Mont|Mo|"
               "Neb|Nev|Okla|Penn|Tenn|Va|Vt|Wisc|Wis|Wyo")
_ABSTATE_CS = "A(?i:z)|A(?i:rk)|D(?i:el)|I(?i:ll)|L(?i:a)|M(?i:ass)|M(?i:iss)|O(?i:re)|P(?i:a)|T(?i:ex)|W(?i:ash)"
_ABCOMP = r"Inc|Cos?|Corp|Pp?t[ye]s?|Ltd|Plc|Rt|Bancorp|Dept|Bhd|Assn|Univ|Intl|Sys"
_ABNUM = "tel|est|ext|sq"
_ABPTIT = r"Jr|Sr|Bros|(?:Ed|Ph)\.D|Blvd|Rd|Esq"
# ABBREV1: etc.  Inc.  Jan.  Calif.  Jr. ...
_ABBREV1 = (f"(?:(?i:{_ABMONTH}|{_ABDAYS}|{_ABSTATE_CI}|{_ABCOMP}|{_ABNUM}|{_ABPTIT}|etc|al|seq|Bldg)"
            f"|{_ABSTATE_CS})\\.")
_ABTITLE = (r"Mrs|Mr|Ms|Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj|Sgt|Cpl|"
            r"Pvt|Capt|Ste?|Ave|Pres|Lieut|Hon|Brig|Co?mdr|Pfc|Spc|Supts?|Det|Mt|Ft|Adj|Adv|Asst|"
            r"Assoc|Ens|Insp|Mlle|Mme|Msgr|Sfc")
_ABCOMP2 = r"Invt|Elec|Natl|M[ft]g"
# ABBREV4 (titles, single letters, acronyms...) and ABBREV2 = ABBREV4 + "."
_ABBREV4 = (f"(?:{_ACRO}|(?i:a\\.k\\.a|{_ABTITLE}|vs|Alex|Wm|Jos|Cie|cf|TREAS|Ph|{_ABCOMP2})"
            f"|M(?i:iss)|[A-Za-z])")
# ABBREV3: only before a number (no. 5, fig. 3, ca. 1900).
_ABBREV3 = r"(?i:ca|figs?|prop|nos?|art|bldg|pp|op)\."

# Words that make a preceding acronym sentence-final; the first letter is
# case-sensitive, the rest is not ("THE" counts, "the" does not).
_SENT_START = ("About|According|Additionally|After|An|A|As|At|But|Earlier|He|Her|Here|However|If|"
               "In|It|Last|Many|More|Mr.|Ms.|Now|Once|One|Other|Our|She|Since|So|Some|Such|That|"
               "The|Their|Then|There|These|They|This|We|When|While|What|Yet|You")
_SENT_START_RX = "|".join(f"{w[0]}(?i:{re.escape(w[1:])})" for w in _SENT_START.split("|"))

_DBLQUOT = r'(?:"|(?i:&quot;))'
_QUOTES_CLASS = "`\u2018\u2019\u201a\u201b\u201c\u201d\u0091\u0092\u0093\u0094\u201e\u201f\u2039\u203a\u00ab\u00bb"

_MISCSYMBOL = (
    "+%&~^|\\\\\u00a6\u00a7\u00a8\u00a9\u00ac\u00ae\u00af\u00b0-\u00b3\u00b4-\u00ba\u00d7\u00f7"
    "\u0387\u05be\u05c0\u05c3\u05c6\u05f3\u05f4\u0600-\u0603\u0606-\u060a\u060c\u0614\u061b"
    "\u061e\u066a\u066d\u0703-\u070d\u07f6\u07f7\u07f8\u0964\u0965\u0e4f\u1fbd\u2016\u2017"
    "\u2020-\u2023\u2030-\u2038\u203b\u203e-\u2042\u2044\u207a-\u207f\u208a-\u208e\u2100-\u214f"
    "\u2190-\u21ff\u2200-\u2bff\u3012\u30fb\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65"
)

# URL, e-mail and SGML patterns use negated classes, as the Java lexer does.
_FULLURL = r'(?i:https?)://[^ \t\n\f\r"<>|(){}]+[^ \t\n\f\r"<>|.!?(){},-]'
_URLPATH = r'(?:/[^ \t\n\f\r"<>|()]+[^ \t\n\f\r"<>|.!?(){},-])?'
_LIKELYURL_WWW = r'(?i:www)\.(?:[^ \t\n\f\r"<>|.!?(){},]+\.)+[a-zA-Z]{2,4}' + _URLPATH
# Note ",-_" is a *range* (0x2C-0x5F) in the Java pattern, kept as such.
_LIKELYURL_DOM = r'(?:[^ \t\n\f\r"`\'<>|.!?(){},-_$]+\.)+(?i:com|net|org|edu)' + _URLPATH
_EMAIL = (r'(?:(?i:&lt;)|<)?[a-zA-Z0-9][^ \t\n\f\r"<>|()\u00a0{}]*@'
          r'(?:[^ \t\n\f\r"<>|(){}.\u00a0]+\.)*[^ \t\n\f\r"<>|(){}.\u00a0]+(?:(?i:&gt;)|>)?')
# File names (only "." inside): 2.jpg  1.5.x  IMG.JPG; kept before a space or . ? ! ,
_FILENAME = (f"{_ALNUMA}+(?:\\.{_ALNUMA}+)*\\.(?i:bat|bmp|cgi|class|cpp|c|dll|docx|doc|exe|gif|gz|html|htm|h|"
             f"jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|png|ppt|ps|py|sql|tar|txt|wav|xml|x|zip)")
_SGML_NAME = r"[A-Za-z][A-Za-z0-9_:.\-]*"
_SGML = (r"<(?:[!?][A-Za-z\-][^>\r\n]*"
         rf"|{_SGML_NAME}(?:[ ]+{_SGML_NAME}(?:[ ]*=[ ]*(?:'[^'\r\n]*'|\"[^\"\r\n]*\"|{_SGML_NAME}))?)*[ ]*/?"
         rf"|/{_SGML_NAME})[ ]*>")

_ACRONYM_CTX = f"{_SPACENL}+(?:{_SENT_START_RX}|{_SGML}){_SPACENL}"

_PHONE_A = r"(?:\([0-9]{2,3}\)[ \u00a0]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \u00a0])?[0-9]{2,4}[\- \u00a0])[0-9]{3,4}[\- \u00a0]?[0-9]{3,5}"
_PHONE_B = r"(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}"

_SMILEY = r"[<>]?[:;=][\-o*']?[()DPdpO\\{@|\[\]]"
_ASIANSMILEY = [r"[\^x=~<>]\.\[\^x=~<>\]", r"[\-\^x=~<>']_[\-\^x=~<>']",
                r"\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)"]

# ---------------------------------------------------------------------------
# Token normalisations (the actions of the Java rules)
# ---------------------------------------------------------------------------

_SINGLE_QUOTE_RX = re.compile(r"&apos;|'")
_DOUBLE_QUOTE_RX = re.compile(r'"|&quot;')
_QUOTE_MAP = str.maketrans({
    "\u0091": "`", "\u2018": "`", "\u201b": "`", "\u2039": "`",
    "\u0092": "'", "\u2019": "'", "\u203a": "'",
    "\u0093": "``", "\u201c": "``", "\u00ab": "``",
    "\u0094": "''", "\u201d": "''", "\u00bb": "''",
})


def _latex_quotes(tok: str, left: bool) -> str:
    """PTB (LaTeX-style) quotes: ` `` for opening, ' '' for closing ones."""
    if left:
        tok = _DOUBLE_QUOTE_RX.sub("``", _SINGLE_QUOTE_RX.sub("`", tok))
    else:
        tok = _DOUBLE_QUOTE_RX.sub("''", _SINGLE_QUOTE_RX.sub("'", tok))
    return tok.translate(_QUOTE_MAP)


_AMP_RX = re.compile(r"(?i:&amp;)")
_CURRENCY = str.maketrans({"\u00a2": "cents", "\u00a3": "#", "\u0080": "$", "\u00a4": "$",
                           "\u20a0": "$", "\u20ac": "$"})
_FRACTIONS = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}


def _no_soft_hyphen(tok: str) -> str:
    return tok.replace("\u00ad", "") or "-"


def _act_plain(t):
    return t


def _act_quote_left(t):
    return _latex_quotes(t, True)


def _act_quote_right(t):
    return _latex_quotes(t, False)


def _act_amp(t):
    return _AMP_RX.sub("&", t)


def _act_nbsp(t):
    return t.replace(" ", "\u00a0")


def _act_phone(t):
    return t.replace(" ", "\u00a0").replace("(", "-LRB-").replace(")", "-RRB-")


def _act_smiley(t):
    return t.replace("(", "-LRB-").replace(")", "-RRB-")


def _act_hyphens(t):
    return "--" if 3 <= len(t) <= 4 else t


def _const(value):
    return lambda t: value


# ---------------------------------------------------------------------------
# The rules, in the Java lexer's priority order.
#   (first-char class, [alternative patterns], trailing context or None,
#    action, pushback)
# ``first`` lists the characters a match can start with (used only to skip
# rules quickly).  ``pushback`` characters are given back after the match
# (cannot -> can + not).  An action of None drops the match (whitespace).
# ---------------------------------------------------------------------------

_RULE_SPECS = [
    # cannot -> can not; gonna -> gon na; 'tis -> 't is; 'twas -> 't was
    ("cC", [r"(?i:cannot)"], None, _act_plain, 3),
    ("gGlLwW", [r"(?i:gonna|gotta|lemme|gimme|wanna)"], None, _act_plain, 2),
    ("'", [r"'(?i:tis)"], None, _act_plain, 2),
    ("'", [r"'(?i:twas)"], None, _act_plain, 3),
    ("<", [_SGML], None, _act_nbsp, 0),
    ("&\u0096\u0097\u2013\u2014\u2015", [r"(?i:&(?:MD|mdash|ndash);)|[\u0096\u0097\u2013\u2014\u2015]"],
     None, _const("--"), 0),
    ("&", [r"(?i:&amp;)"], None, _const("&"), 0),
    ("&", [r"(?i:&(?:HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);)"], None, _act_plain, 0),
    (_FIRST_WORD, [_WORD], _REDAUX, _no_soft_hyphen, 0),
    ("A-Za-z\u00ad", [_SWORD], _SREDAUX, _no_soft_hyphen, 0),
    (_FIRST_WORD, [_WORD], None, _no_soft_hyphen, 0),
    # Apostrophe words: 'n'  l'  d'  'em  O'Neil  '90s  'till  ma'am  'cause ...
    (f"(?:[^\\W\\d_]|['\u0092\u2019&\u1885\u1886])", [
        f"{_APOS}(?i:n){_APOS}?", f"[lLdDjJ]{_APOS}", f"(?i:Dunkin|somethin|ol){_APOS}",
        f"{_APOS}(?i:em)", f"[A-HJ-XZn]{_APOSETC}{_PLA}{{2,}}", f"{_APOS}[2-9]0(?i:s)",
        f"{_APOS}(?i:till?)", f"{_PLA}+[aeiouyAEIOUY]{_APOSETC}[aeiouA-Z]{_PLA}*",
        f"{_APOS}(?i:cause)", r"(?i:cont'd)\.?",
        r"(?i:nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)", f"(?i:o){_APOSETC}(?i:o)",
    ], None, _act_plain, 0),
    ("yY", [f"(?i:y){_APOS}"], _PLA, _act_plain, 0),          # y'all -> y' all
    ("hH", [_FULLURL], None, _act_plain, 0),
    ("(?:[wW]|[^ \t\n\f\r\"`'<>|.!?(){},-_$])", [_LIKELYURL_WWW, _LIKELYURL_DOM], None, _act_plain, 0),
    ("<&A-Za-z0-9", [_EMAIL], None, _act_plain, 0),
    ("@", [r"@[a-zA-Z_][a-zA-Z_0-9]*"], None, _act_plain, 0),
    ("#", [f"#{_LETTER}+"], None, _act_plain, 0),
    ("'\u0092\u2019&", [_REDAUX], "[^A-Za-z]", _act_quote_right, 0),
    ("nN", [_SREDAUX], None, _act_quote_right, 0),
    # programming languages: c++ c# f#
    ("cCfF", [r"(?i:c\+\+|[cf]#)"], None, _act_plain, 0),
    (r"\d", [f"{_D}{{1,2}}[-/]{_D}{{1,2}}[-/]{_D}{{2,4}}"], None, _act_plain, 0),   # dates
    (r"\d\-+.:,\u00ad\u066b\u066c", [_NUMBER], None, _no_soft_hyphen, 0),
    ("\u207a\u207b\u208a\u208b\u2070\u00b9\u00b2\u00b3\u2074-\u2079\u2080-\u2089",
     [r"[\u207a\u207b\u208a\u208b]?(?:[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+|[\u2080-\u2089]+)"],
     None, _act_plain, 0),
    # fractions: 1/2, 5 7/8 (space kept as U+00A0), 12-3/4
    (r"\d", [f"(?:{_D}{{1,4}}[- \u00a0])?{_D}{{1,4}}(?:\\\\?/|\u2044){_D}{{1,4}}"], None, _act_nbsp, 0),
    ("\u00bc\u00bd\u00be\u2153-\u215e", [r"[\u00bc\u00bd\u00be\u2153-\u215e]"], None,
     lambda t: _FRACTIONS.get(t, t), 0),
    # treebank specials: -LRB- ...  C.D.s  pro-  anti-  S&P-500  S&Ls  Cap'n  c'est
    ("-CcpPaAsS", [r"-(?i:RRB|LRB|RCB|LCB|RSB|LSB)-", r"(?i:C\.D\.s|pro-|anti-)",
                   r"(?i:S(?:&|&amp;)P-500)", r"(?i:S(?:&|&amp;)Ls)",
                   f"(?i:Cap){_APOS}(?i:n)", f"(?i:c){_APOS}(?i:est)"], None, _act_amp, 0),
    ("A-Za-z0-9", [_THING3], None, _act_plain, 0),
    ("A-Z$#", [r"[A-Z]*\$|#"], None, _act_plain, 0),
    ("\u00a2\u00a3\u00a4\u00a5\u0080\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6",
     [r"[\u00a2\u00a3\u00a4\u00a5\u0080\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]"],
     None, lambda t: t.translate(_CURRENCY), 0),
    # An acronym before a typical sentence start ("I. The", "U.S. In") is a
    # sentence end: Java returns the acronym and then the period again, but a
    # one-letter acronym loses its period ("i" "."). The next caption counts
    # too: the lines are separated by newlines, which are SPACENL.
    ("A-Za-z", [f"(?:{_ACRO}|[A-Za-z])\\."], _ACRONYM_CTX,
     lambda t: t if len(t) == 1 else t + ".", 1),
    # (The other Java rules that return an abbreviation *and* an extra "."
    # before a sentence end are left out: pycocoevalcap deletes that "." anyway.)
    ("A-Za-z", [_ABBREV3], f"{_SPACENL}?{_D}", _act_plain, 0),
    # ABBREV1 followed by any two characters: "etc.a" -> "etc." "a"
    ("A-Za-z", [_ABBREV1], "(?s:..)", _act_plain, 0),
    ("A-Za-z", [_ABBREV1], None, _act_plain, 0),
    ("A-Za-z", [f"{_ABBREV4}\\."], None, _act_plain, 0),
    ("A-Za-z", [_ABBREV4], f"[{_SPACE}]", _act_plain, 0),
    ("A-Za-z", [_ACRO], _SPACENL, _act_plain, 0),
    ("'\u0092\u2019&", [f"{_APOS}[0-9][0-9]"], _SPACENL, _act_plain, 0),           # '90
    (_FIRST_ALNUM, [_FILENAME], f"(?:{_SPACENL}|[.?!,])", _act_plain, 0),
    (_FIRST_WORD, [f"{_WORD}\\."], "[,;:\u3001]", _no_soft_hyphen, 0),               # word.,
    (r"(+0-9", [_PHONE_A, _PHONE_B], None, _act_phone, 0),
    ('"&', [_DBLQUOT], r"[A-Za-z0-9$]", _act_quote_left, 0),
    ('"&', [_DBLQUOT], None, _act_quote_right, 0),
    ("\x7f", ["\x7f"], None, None, 0),
    ("<&", [r"<|(?i:&lt;)"], None, _const("<"), 0),
    (">&", [r">|(?i:&gt;)"], None, _const(">"), 0),
    ("<>:;=", [_SMILEY], "[^A-Za-z0-9]", _act_smiley, 0),
    (r"\^x=~<>\-'(", _ASIANSMILEY, None, _act_smiley, 0),
    ("{", [r"\{"], None, _const("-LCB-"), 0),
    ("}", [r"\}"], None, _const("-RCB-"), 0),
    (r"\[", [r"\["], None, _const("-LSB-"), 0),
    (r"\]", [r"\]"], None, _const("-RSB-"), 0),
    ("(", [r"\("], None, _const("-LRB-"), 0),
    (")", [r"\)"], None, _const("-RRB-"), 0),
    ("-", [r"-+"], None, _act_hyphens, 0),
    (".\u00a0\u0085\u2026", [r"\.{3,5}", r"(?:\.[ \u00a0]){2,4}\.", r"[\u0085\u2026]"], None, _const("..."), 0),
    ("@#_", [r"@+|#+|_+"], None, _act_plain, 0),
    (r"*\\", [r"\*+|(?:\\\*){1,3}"], None, _act_plain, 0),
    (",;:\u3001", [r"[,;:\u3001]"], None, _act_plain, 0),
    ("?!", [r"[?!]+"], None, _act_plain, 0),
    (".\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa\u3002",
     [r"[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa\u3002]"], None, _act_plain, 0),
    ("=", ["="], None, _act_plain, 0),
    ("/", ["/"], None, _act_plain, 0),
    ("A-Za-z0-9", [f"{_HTHING}\\."], "[,;:\u3001]", _no_soft_hyphen, 0),
    ("A-Za-z0-9", [_HTHING], None, _no_soft_hyphen, 0),
    (_FIRST_ALNUM, [f"{_THING}\\."], "[,;:\u3001]", _act_plain, 0),
    (_FIRST_ALNUM, [_THING], None, _act_plain, 0),
    ("A-Z", [f"{_THINGA}\\."], "[,;:\u3001]", _act_amp, 0),
    ("A-Z", [_THINGA], None, _act_amp, 0),
    ("'", ["'"], f"[A-Za-z][^ \t\n\r\u00a0]", _act_quote_left, 0),   # opening quote
    ("'\u0092\u2019&", [_REDAUX], None, _act_quote_right, 0),
    (f"'&{_QUOTES_CLASS}", [_APOS, "''", f"[{_QUOTES_CLASS}]{{1,2}}"], None, _act_quote_right, 0),
    ("<>", [r"<<|>>"], None, _act_plain, 0),
    (_MISCSYMBOL, [f"[{_MISCSYMBOL}]"], None, _act_plain, 0),
    # Ignored: NUL, spaces, zero-width characters, newlines, &nbsp;
    (f"\x00{_SPACE}\u200b\u200e\u200f\ufeff{_NLCHARS}&",
     [f"\x00|[{_SPACE}]+|[\u200b\u200e\u200f\ufeff]|[{_NLCHARS}]|(?i:&nbsp;)"], None, None, 0),
]


class _Rule:
    __slots__ = ("first", "patterns", "compiled", "action", "pushback")

    def __init__(self, first, alts, ctx, action, pushback):
        # ``first`` is a character-class body, or a whole regex if it starts with "(?:".
        self.first = re.compile(first if first.startswith("(?:") else f"[{first}]")
        # The token is group 1; a trailing context, if any, follows it and
        # counts for the longest-match comparison only.
        self.patterns = [f"({a})(?:{ctx})" if ctx else f"({a})" for a in alts]
        self.compiled = None
        self.action = action
        self.pushback = pushback

    @property
    def alts(self) -> list:
        # compiled on first use: most text never reaches most rules, and
        # compiling all of them would cost more than tokenizing a COCO test set
        if self.compiled is None:
            self.compiled = [re.compile(p) for p in self.patterns]
        return self.compiled


_RULES: list[_Rule] = []  # built on first use (see _candidates): plain captions never need them
_CANDIDATES: dict[str, list] = {}


def _candidates(ch: str) -> list:
    """Rules that can match at a position holding ``ch`` (cached per char)."""
    rules = _CANDIDATES.get(ch)
    if rules is None:
        if not _RULES:
            _RULES.extend(_Rule(*spec) for spec in _RULE_SPECS)
        rules = [r for r in _RULES if r.first.match(ch)]
        _CANDIDATES[ch] = rules
    return rules


def _lex(s: str, stop: int | None = None) -> list[str]:
    """Raw (not yet lowercased or filtered) PTB tokens of ``s``: JFlex-style
    longest match over all rules, ties to the earlier rule. Text from ``stop``
    on is only looked at as trailing context (no token crosses a newline)."""
    out = []
    i, n = 0, len(s)
    if stop is None:
        stop = n
    while i < stop:
        best_len, best_rule, best_tok = 0, None, None
        for rule in _candidates(s[i]):
            for rx in rule.alts:
                m = rx.match(s, i)
                if m is not None:
                    length = m.end() - i
                    if length > best_len:
                        best_len, best_rule, best_tok = length, rule, m.group(1)
        if best_rule is None:
            i += 1          # untokenizable character: dropped (Java logs a warning)
            continue
        if best_rule.pushback:
            best_tok = best_tok[: -best_rule.pushback]
        i += len(best_tok)
        if best_rule.action is not None:
            out.append(best_rule.action(best_tok))
    return out


def _finish(raw: list[str]) -> list[str]:
    """What pycocoevalcap does with the output line: -lowerCase, rstrip() the
    line (which can eat a U+00A0 ending the last token, e.g. of a URL), split
    on " " and delete the punctuation tokens."""
    line = " ".join(raw).lower().rstrip()
    return [t for t in line.split(" ") if t not in _PUNCTUATIONS] if line else []


# ---------------------------------------------------------------------------
# Fast paths and caches
# ---------------------------------------------------------------------------
# Three levels, all giving the same result as running _lex on the caption:
#  1. "simple" captions (ASCII letters, spaces, commas, an optional final
#     period): each letter run is a word, commas and the final period are
#     deleted, unless the caption contains cannot/gonna/... or ends in a
#     possible abbreviation ("etc.", "Mr.", "U.");
#  2. other ASCII captions in which no token can span a space and no rule
#     looks past the end of a chunk: split on whitespace and lex each distinct
#     chunk once (cached);
#  3. everything else: _lex on the whole caption.

_SIMPLE = re.compile(r"[A-Za-z ,]*\.?[ ]*")
_ASSIMILATION = re.compile(r"cannot|gonna|gotta|lemme|gimme|wanna")   # on lowercased text
_SPLIT_ASSIMILATIONS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"),
                        "lemme": ("lem", "me"), "gimme": ("gim", "me"), "wanna": ("wan", "na")}
# A word + "." that the lexer may keep as one token (abbreviations), and a
# case-insensitive superset of it for a quick check on lowercased words.
_ABBREV_RX = re.compile(f"(?:{_ABBREV1}|{_ABBREV4}\\.|{_ABBREV3})")
_ABBREV_CI = re.compile(_ABBREV_RX.pattern, re.IGNORECASE)
_MAYBE_ABBREV: dict[str, bool] = {}


def _maybe_abbrev(low_word: str) -> bool:
    r = _MAYBE_ABBREV.get(low_word)
    if r is None:
        if len(_MAYBE_ABBREV) >= _CACHE_MAX:
            _MAYBE_ABBREV.clear()
        r = _MAYBE_ABBREV[low_word] = _ABBREV_CI.fullmatch(low_word) is not None
    return r


# Level 2 applies to ASCII captions without any of these:
#   <                      SGML tags may contain spaces
#   control characters     URL/e-mail/SGML patterns may contain them
#   digit space digit, ") digit"   fractions "5 7/8", phone numbers
#   ". ." and ". digit"            spaced ellipses, "no. 5"
#   one letter + ". " + capital    "I. The" (sentence-final acronym)
_NEEDS_FULL_LEX = re.compile(
    r"[<\x00-\x08\x0e-\x1f\x7f]|[\d)][ \t]+[\d(+]|\.[ \t]+[.\d]"
    r"|(?:^|[^A-Za-z0-9])[A-Za-z]\.[ \t]+[A-Z]"
)

# A caption whose result may depend on the *next* caption (the Java lexer reads
# all captions as one text, one per line): it ends with a one-letter acronym
# ("Wii U." then "A dog ..." gives "wii u") or with "no." / "fig." ... (before
# a caption that starts with a digit it stays "no.").
_ENDS_OPEN = re.compile(
    f"(?:^|[^A-Za-z0-9])(?:[A-Za-z]|{_ABBREV3[:-2]})\\.[{_SPACE}]*\\Z"
)
_NEXT_MATTERS = re.compile(f"[{_SPACE}\\n]*[A-Z<]|\\d")
_BLANK = " \t\u00a0\u3000" + "".join(map(chr, range(0x2000, 0x200B)))

# Level-2 chunks handled without the lexer: hyphenated words, and a word with
# one clitic ('s 're 've 'll 'd 'm, or n't after a letter other than n, as
# the lexer splits it), each optionally followed by punctuation the wrapper deletes.
_HYPHENATED = re.compile(r"[A-Za-z]{2,}(?:-[A-Za-z]{2,})+[,;:!?]?")
_CLITIC = re.compile(r"(?:([A-Za-z]*[A-MO-Za-mo-z])(n't)|([A-Za-z]{2,})('(?:[sSdDmM]|re|RE|ve|VE|ll|LL)))[,;:!?]?")
_CHUNK_CACHE: dict[str, list[str]] = {}
_CAPTION_CACHE: dict[str, str] = {}
_OPEN_END: set[str] = set()        # cached captions whose result may depend on the next one
_CACHE_MAX = 1 << 18


def _word_tokens(word: str) -> list[str]:
    """Tokens of a run of ASCII letters (lowercased)."""
    low = word.lower()
    return list(_SPLIT_ASSIMILATIONS.get(low, (low,)))


def _chunk_tokens(chunk: str) -> list[str]:
    """Final tokens of one whitespace-free ASCII chunk (level 2, cached)."""
    toks = _CHUNK_CACHE.get(chunk)
    if toks is None:
        head, last = chunk[:-1], chunk[-1]
        if chunk.isalpha():                     # a plain word, the common case
            toks = _word_tokens(chunk)
        elif head.isalpha() and (last in ",;:!?" or (last == "." and _ABBREV_RX.fullmatch(chunk) is None)):
            toks = _word_tokens(head)           # word + deleted punctuation
        elif _HYPHENATED.fullmatch(chunk) is not None:
            toks = [chunk.rstrip(",;:!?").lower()]     # "ice-cream" stays one token
        elif (m := _CLITIC.fullmatch(chunk)) is not None:
            # "man's" -> man 's, "don't" -> do n't (a final , ; : ! ? is deleted)
            toks = [t.lower() for t in m.groups() if t is not None]
        else:
            toks = _finish(_lex(chunk + " "))
        if len(_CHUNK_CACHE) >= _CACHE_MAX:
            _CHUNK_CACHE.clear()
        _CHUNK_CACHE[chunk] = toks
    return toks


def _simple(low: str) -> str | None:
    """Level 1, for a lowercased caption matching _SIMPLE; None if it needs level 2.
    (Written with string methods only: it runs for almost every caption.)"""
    # ("nn", "tt", "mm": a cheap test before looking for gonna, gotta ...)
    if ("nn" in low or "tt" in low or "mm" in low) and _ASSIMILATION.search(low) is not None:
        return None
    if "," in low:
        low = low.replace(",", " ")
    if "  " in low or low[:1] == " " or low[-1:] == " ":
        low = " ".join(low.split())
    if low[-1:] != ".":
        return low
    cut = low.rfind(" ") + 1
    w = low[cut:]                       # the last word, with its period
    if w == ".":
        return low[:cut - 1] if cut else ""
    maybe = _MAYBE_ABBREV.get(w)
    if maybe is None:
        maybe = _maybe_abbrev(w)
    return None if maybe else low[:-1]  # "table." -> "table" (+ a deleted ".")


def _tokenize(text: str) -> tuple[str, bool]:
    """(tokenized caption, whether the next caption may change it)."""
    if type(text) is not str:
        raise TypeError(f"caption must be a str, not {type(text).__name__}")
    s = text if text.isprintable() else text.translate(_LINEBREAKS)
    if s.isascii():
        if _SIMPLE.fullmatch(s) is not None:                       # level 1
            r = _simple(s.lower())
            if r is not None:
                return r, False
        if _NEEDS_FULL_LEX.search(s) is None:                      # level 2
            out = []
            cache = _CHUNK_CACHE
            for chunk in s.split():
                toks = cache.get(chunk)
                if toks is None:
                    toks = _chunk_tokens(chunk)
                out += toks
            return " ".join(out), _ENDS_OPEN.search(s) is not None
    # level 3; a newline follows every caption in the file Java reads
    return " ".join(_finish(_lex(s + "\n"))), _ENDS_OPEN.search(s) is not None


def _lookup(text: str) -> str:
    """Tokenize ``text`` on a cache miss and cache the result."""
    r = None
    if _SIMPLE.fullmatch(text) is not None:     # the common case first (level 1)
        r = _simple(text.lower())
    if r is None:
        r, open_end = _tokenize(text)
        if open_end:
            _OPEN_END.add(text)
    if len(_CAPTION_CACHE) >= _CACHE_MAX:
        _CAPTION_CACHE.clear()
        _OPEN_END.clear()
    _CAPTION_CACHE[text] = r
    return r


# In the file Java reads, the last caption is followed by end-of-file, not by a
# newline. That matters only when the caption ends with a token whose rule
# wants to see one more character: ":)" (smiley), "'90", "'re" (then the
# apostrophe becomes an opening quote), "2.jpg", "etc.a" (abbreviation + 2
# characters) and "I. The" (sentence-final acronym). The cached results assume
# a newline; a last caption that may end like this is lexed again without it.
# (Over-inclusive; only the last 64 characters are looked at.)
_EOF_SENSITIVE = re.compile(
    r"(?:[:;=][\-o*']?[()DPdpO\\{@|\[\]]"            # smiley
    r"|(?:['\u0092\u2019]|(?i:&apos;))\d\d"            # '90
    r"|'(?i:re|ve|ll)"                                 # they're -> they ` re
    r"|\.[^\s.]+"                                      # 2.jpg  etc.a  non-U.S
    r"|\.\s+(?:\S+|<[^>]*>)"                           # I. The  /  I. <b c>
    r")\Z"
)
_EOF_CACHE: dict[str, str] = {}


def _at_eof(text: str, r: str) -> str:
    """``r`` (the result for ``text`` followed by a newline) for ``text``
    followed by end-of-file instead."""
    s = text if text.isprintable() else text.translate(_LINEBREAKS)
    if _EOF_SENSITIVE.search(s, max(0, len(s) - 64)) is None:
        return r
    e = _EOF_CACHE.get(text)
    if e is None:
        e = " ".join(_finish(_lex(s)))
        if len(_EOF_CACHE) >= _CACHE_MAX:
            _EOF_CACHE.clear()
        _EOF_CACHE[text] = e
    return e


def ptb_tokenize(text: str) -> str:
    """Tokenize one caption as pycocoevalcap's PTBTokenizer does.

    Returns the lowercased tokens joined by single spaces, without the tokens
    pycocoevalcap deletes (punctuation such as ``.`` ``,`` ``'`` ``--``); the
    result may be ``""``. Line breaks of any kind count as spaces.

    The caption is tokenized as pycocoevalcap does it inside a batch, i.e.
    followed by a newline and a caption that starts no sentence; see
    :func:`ptb_tokenize_batch` for the neighbour effects (the very last
    caption of a batch is followed by end-of-file instead: there Java gives
    "i 'd ` ve" for "I'd've" and so pycocoevalcap "i 'd ve").
    """
    r = _CAPTION_CACHE.get(text)
    return r if r is not None else _lookup(text)


def _with_next(texts: list[str], i: int) -> str | None:
    """Caption ``i`` tokenized with the following captions as trailing context,
    or None when they cannot change the result."""
    parts = []
    for j in range(i + 1, len(texts)):
        t = texts[j].translate(_LINEBREAKS)
        parts.append(t)
        if t.strip(_BLANK):
            break
    following = "\n".join(parts)
    if _NEXT_MATTERS.match(following) is None:
        return None
    if i + len(parts) < len(texts) - 1:
        following += "\n"        # else the following text ends at end-of-file
    s = texts[i].translate(_LINEBREAKS)
    return " ".join(_finish(_lex(s + "\n" + following, stop=len(s))))


def ptb_tokenize_batch(texts: list[str]) -> list[str]:
    """Tokenize many captions as one pycocoevalcap call does: always
    ``len(texts)`` results, in the same order.

    pycocoevalcap's Java tokenizer reads the captions as one text, one caption
    per line, so a few results depend on the neighbours, and this function
    reproduces that: a caption ending in a one-letter abbreviation or in "no."
    / "fig." ... is tokenized knowing how the next caption starts ("Wii U."
    before "A dog ..." gives "wii u", before "the dog" "wii u."), and the last
    caption is followed by end-of-file. To match pycocoevalcap exactly, pass the
    references and the candidates in two calls, in its order (image by image,
    captions in order), as it tokenizes them separately. Line breaks inside a
    caption never shift the alignment (see the module docstring).
    """
    if not isinstance(texts, (list, tuple)):
        texts = list(texts)
    cache = _CAPTION_CACHE
    out = []
    append = out.append
    for t in texts:
        r = cache.get(t)
        append(r if r is not None else _lookup(t))
    if _OPEN_END:
        open_end = _OPEN_END
        for i in range(len(texts) - 1):
            if texts[i] in open_end:
                r2 = _with_next(texts, i)
                if r2 is not None:
                    out[i] = r2
    if out:
        out[-1] = _at_eof(texts[-1], out[-1])
    return out


if __name__ == "__main__":  # pragma: no cover - manual use: tokenize stdin lines
    for line in sys.stdin:
        print(ptb_tokenize(line.rstrip("\n")))
