"""The options as --help gives them (made from each program's own option table, src/sbxd.c,
src/sbxfs.c and fs/options.c) are the ones the man pages' sources (docs/*.1.scd) and README's
usage block name, with the same arguments and defaults: a new option, a renamed one or a changed
default cannot leave one of them behind."""
import os
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# What every program has and no synopsis needs to repeat.
INFORMATIONAL = {'--help', '-h', '--version', '-V'}


def help_text(build_dir, program):
    out = subprocess.run([os.path.join(build_dir, 'src', program), '--help'],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=30, check=True).stdout
    return out


def sbxd_help(build_dir):
    """{option: (argument or None, text)}, -v and --verbose both as keys."""
    opts, last = {}, None
    for line in help_text(build_dir, 'sbxd').splitlines():
        m = re.match(r'  (?:(-\w), )?(--[\w-]+)(?: (\S+))?(?:\s{2,}(.*)|$)', line)
        if m:
            short, name, arg, text = m.groups()
            last = [arg, text or '']
            opts[name] = last
            if short:
                opts[short] = last
        elif last is not None and re.match(r' {24}\S', line):
            last[1] = (last[1] + ' ' + line.strip()).strip()
        else:
            last = None
    return {k: tuple(v) for k, v in opts.items()}


def sbxfs_help(build_dir):
    """Own -o options {name: (argument or None, text)}, and every option --help names."""
    own, named, section = {}, set(), None
    for line in help_text(build_dir, 'sbxfs').splitlines():
        if line.endswith('options:'):
            section = line
            continue
        m = re.match(r'\s+-o (\w+)(?:=(\S+))?\s{2,}(.*)', line)
        if m and section in ('sbxfs options:', 'Cache options:'):
            own[m.group(1)] = (m.group(2), m.group(3))
        named.update(re.findall(r'(?:^|\s)(-\w|--[\w-]+)\b', line))
        named.update('-o ' + o for o in re.findall(r'-o (\w+)', line))
    assert own, 'sbxfs --help lists no options of its own'
    return own, named


def plain(scd):
    """scdoc's text without its formatting: * (bold) always, _ (underline) where scdoc takes it
    as formatting, the backslash of an escape."""
    out, under, i = [], False, 0
    while i < len(scd):
        c = scd[i]
        last = scd[i - 1] if i else ' '
        nxt = scd[i + 1] if i + 1 < len(scd) else ' '
        if c == '\\' and i + 1 < len(scd):
            out.append(nxt)
            i += 2
            continue
        if c == '_' and (not last.isalnum() or (under and not nxt.isalnum())):
            under = not under
        elif c != '*':
            out.append(c)
        i += 1
    return ''.join(out).replace('++', '')


def man_source(page):
    with open(os.path.join(REPO, 'docs', page + '.1.scd')) as f:
        return f.read()


def man_section(scd, title):
    m = re.search(r'^# %s\n(.*?)(?=^# |\Z)' % re.escape(title), scd, re.M | re.S)
    assert m, 'no section %s' % title
    return m.group(1)


def man_entries(section):
    """The definitions of a section ("*--listen* _HOST:PORT_" then tab-indented text):
    {term line (plain): text (plain)}."""
    entries, term = {}, None
    for line in section.splitlines():
        if line.startswith('\t') and term is not None:
            entries[term] += ' ' + plain(line.strip())
        elif line.startswith(('*-', '#')) or not line.strip():
            term = plain(line).strip() if line.startswith('*-') else None
            if term:
                entries[term] = ''
        else:
            term = None
    return entries


def words_options(text):
    """The options a synopsis names, with their arguments: {'--listen': 'HOST:PORT',
    '-v': None, '-o token_file': 'FILE', '-o no_watch': None}. "-o OPTIONS" is no option."""
    words = text.replace('[', ' ').replace(']', ' ').split()
    found = {}
    for i, w in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else None
        if w == '-o' and nxt and nxt != 'OPTIONS':
            name, _, arg = nxt.partition('=')
            found['-o ' + name] = arg or None
        elif w.startswith('-') and w != '-o':
            found[w] = nxt if nxt and not nxt.startswith('-') else None
    return found


def readme_usage(program):
    with open(os.path.join(REPO, 'README.md')) as f:
        readme = f.read()
    m = re.search(r'^## Usage\n+```\n(.*?)```', readme, re.M | re.S)
    assert m, "README.md has no usage block under '## Usage'"
    lines, taken = [], False
    for line in m.group(1).splitlines():
        if line and not line[0].isspace():
            taken = line.split()[0] == program
        if taken:
            lines.append(line)
    assert lines, "README.md's usage block has no line for %s" % program
    return ' '.join(lines)


def synopsis(page):
    """The first command of the man page's SYNOPSIS (up to its first forced line break)."""
    return plain(man_section(man_source(page), 'SYNOPSIS').split('++')[0])


def long_names(build_dir):
    """{'-v': '--verbose', ...}: each short option's long name, as --help pairs them."""
    return dict(re.findall(r'^  (-\w), (--[\w-]+)', help_text(build_dir, 'sbxd'), re.M))


def test_sbxd_man_page_documents_every_option(build_dir):
    helped = sbxd_help(build_dir)
    entries = man_entries(man_section(man_source('sbxd'), 'OPTIONS'))
    documented = {}
    for term, text in entries.items():
        names = re.findall(r'(--?[\w-]+)(?: (\S+))?', term)
        for name, arg in names:
            documented[name] = (arg or None, text)
    assert {k: v[0] for k, v in documented.items()} == {k: v[0] for k, v in helped.items()}
    for name, (_, text) in helped.items():
        for default in re.findall(r'default ([^\s;,)]+)', text):
            assert 'default ' + default in documented[name][1], \
                '%s: --help says default %s, sbxd(1) does not' % (name, default)


def test_sbxd_synopsis_and_readme_name_every_option(build_dir):
    long_ = long_names(build_dir)
    own = {k: v[0] for k, v in sbxd_help(build_dir).items()
           if k.startswith('--') and k not in INFORMATIONAL}
    for where, text in (('sbxd(1) SYNOPSIS', synopsis('sbxd')),
                        ('README.md usage', readme_usage('sbxd'))):
        named = {long_.get(k, k): v for k, v in words_options(text).items()}
        assert named == own, where


def test_sbxfs_man_page_documents_every_option(build_dir):
    own, _ = sbxfs_help(build_dir)
    scd = man_section(man_source('sbxfs'), 'OPTIONS')
    own_part = scd.split('## FUSE options')[0]
    documented = {}
    for term, text in man_entries(own_part).items():
        for name, arg in re.findall(r'(?:-o )?(\w+)(?:=(\S+?))?(?:,|$)', term):
            documented[name] = (arg or None, text)
    assert {k: v[0] for k, v in documented.items()} == {k: v[0] for k, v in own.items()}
    for name, (_, text) in own.items():
        for default in re.findall(r'\((\d+)\)$', text):
            assert re.search(r'\b%s\b' % default, documented[name][1]), \
                '%s: --help says %s, sbxfs(1) does not' % (name, default)


@pytest.mark.parametrize('where', ['sbxfs(1) SYNOPSIS', 'README.md usage'])
def test_sbxfs_synopsis_and_readme_name_every_option(build_dir, where):
    own, helped = sbxfs_help(build_dir)
    text = synopsis('sbxfs') if where.startswith('sbxfs(1)') else readme_usage('sbxfs')
    named = words_options(text)
    for name, arg in named.items():
        if name.startswith('-o ') and name[3:] in own:
            assert arg == own[name[3:]][0], '%s: %s=%s, --help says %s' % (
                where, name, arg, own[name[3:]][0])
        else:
            assert name in helped, '%s names %s, which sbxfs --help does not' % (where, name)
    missing = {o for o in own if '-o ' + o not in named}
    assert not missing, '%s does not name %s' % (where, ', '.join(sorted(missing)))
