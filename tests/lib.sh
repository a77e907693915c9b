# Shared by ./bootstrap and ./run-tests (sourced, not run): the Debian packages the project
# needs and the one function that installs the missing ones.

# build: compiler, meson, the libraries' headers, scdoc for the man pages
SBX_PKGS_BUILD="meson ninja-build pkg-config gcc libc6-dev libfuse3-dev libcurl4-openssl-dev
	libcjson-dev libmicrohttpd-dev scdoc"
# run: fusermount3 and the FUSE helpers; bwrap isolates sbxd's commands
SBX_PKGS_RUN="fuse3 bubblewrap"
# code contexts: the interpreters sbxd starts (IPython with the usual data libraries; Node.js
# for JavaScript, esbuild to strip TypeScript's types)
SBX_PKGS_INTERP="python3 python3-ipython python3-numpy python3-pandas python3-matplotlib nodejs
	esbuild"
# tests: pytest with per-test timeouts, and the tools the tests drive as a user would
# (systemd-analyze checks the installed units)
SBX_PKGS_TEST="python3 python3-pytest python3-pytest-timeout vim git tar gzip diffutils
	findutils coreutils procps openssl systemd jq file"
# static analysis (tests/tidy/run): clang-tidy, with the checks of .clang-tidy
SBX_PKGS_CHECK="clang-tidy"
# fuzzing (tests/fuzz/run): clang with libFuzzer and the sanitizer runtimes
SBX_PKGS_FUZZ="clang-14 clang libclang-rt-14-dev"
# the Cloudflare Worker (worker/): npm for its dependencies (sbx_worker_deps), curl for the
# preview URLs its tests fetch
SBX_PKGS_WORKER="npm curl"

sbx_say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
sbx_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Runs its arguments as root: directly when we are root, else through sudo.
sbx_as_root()
{
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo "$@"
	else
		sbx_die "need root to run: $* (install sudo or run as root)"
	fi
}

# A package counts as present when dpkg says "install ok installed". vim is satisfied by any
# Debian variant that provides the vim command (vim-nox, vim-gtk3...; vim-tiny does not), npm
# by any npm command (NodeSource's nodejs brings its own and conflicts with Debian's npm).
sbx_missing_packages()
{
	local p missing=()
	for p in $*; do
		[ "$p" = vim ] && command -v vim >/dev/null && continue
		[ "$p" = npm ] && command -v npm >/dev/null && continue
		dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
			missing+=("$p")
	done
	echo "${missing[*]}"
}

# Installs what is missing of the given package lists; quiet unless apt fails.
sbx_install_packages()
{
	command -v dpkg-query >/dev/null || sbx_die "not a Debian system: install by hand: $*"
	local missing log
	missing=$(sbx_missing_packages "$@")
	[ -z "$missing" ] && return 0
	sbx_say "installing Debian packages: $missing"
	log=$(mktemp)
	if ! sbx_as_root env DEBIAN_FRONTEND=noninteractive apt-get -q update >"$log" 2>&1 ||
	   ! sbx_as_root env DEBIAN_FRONTEND=noninteractive apt-get -q -y \
			--no-install-recommends install $missing >>"$log" 2>&1; then
		cat "$log" >&2
		rm -f "$log"
		sbx_die "apt-get failed (output above)"
	fi
	rm -f "$log"
}

# Installs the Worker's npm dependencies into worker/node_modules with `npm ci` (the versions
# of worker/package-lock.json, from the npm registry) unless they are there already, installed
# after the lock file last changed. Fails with npm's output. Run from the top of the tree.
sbx_worker_deps()
{
	local installed=worker/node_modules/.package-lock.json log
	[ -f "$installed" ] && [ "$installed" -nt worker/package-lock.json ] && return 0
	command -v npm >/dev/null || { echo "error: npm is missing (Debian: npm)" >&2; return 1; }
	sbx_say "installing the Worker's npm dependencies (npm ci in worker/)"
	log=$(mktemp)
	if ! (cd worker && npm ci --no-audit --no-fund --loglevel=error) >"$log" 2>&1; then
		cat "$log" >&2
		rm -f "$log"
		echo "error: npm ci in worker/ failed (output above)" >&2
		return 1
	fi
	rm -f "$log"
}

# Configures DIR (meson setup on first use, option changes afterwards) and builds it.
sbx_build()
{
	local dir=$1; shift
	local log
	if [ -f "$dir/build.ninja" ]; then
		meson configure "$dir" "$@" >/dev/null || sbx_die "meson configure $dir failed"
	else
		log=$(mktemp)
		meson setup "$dir" "$@" >"$log" 2>&1 ||
			{ cat "$log" >&2; rm -f "$log"; sbx_die "meson setup $dir failed"; }
		rm -f "$log"
	fi
	ninja -C "$dir" || sbx_die "build in $dir failed"
}
