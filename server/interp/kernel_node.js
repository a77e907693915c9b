// The JavaScript/TypeScript kernel of a code context, run by host_node.py: requests arrive as
// JSON lines on fd 3, messages leave as JSON lines on fd 4, console output goes to fd 1 and 2.
//
// Code runs as a script in node's own global context, like the REPL: top-level const, let,
// class and function declarations of one execution are visible to the next. Code with a
// top-level await is rewritten by the REPL's own transform (internal/repl/await, hence
// --expose-internals): declarations are hoisted out of an async wrapper that returns the last
// expression's value. TypeScript is first stripped of its types by esbuild.
//
// Interrupts: synchronous code runs with breakOnSigint, so the SIGINT the host sends stops it;
// an await in progress is abandoned (the promise it waits for cannot be cancelled) when SIGINT
// or an interrupt message arrives.
(function (require) {
'use strict';
const fs = require('fs');
const net = require('net');
const readline = require('readline');
const util = require('util');
const vm = require('vm');
const { spawnSync } = require('child_process');

let processTopLevelAwait = null;
try {
	({ processTopLevelAwait } = require('internal/repl/await'));
} catch (e) {
	// without it, code with a top-level await runs in an async function (its declarations
	// do not persist)
}
if (typeof globalThis.require !== 'function')
	globalThis.require = require;

let typescript = false;
let executionCount = 0;
let current = null;     // { seq, interrupt() } of the execution in progress
let cancelled = null;   // seq interrupted before it started
let lastDone = 0;

function send(msg) {
	const data = Buffer.from(JSON.stringify(msg) + '\n');
	for (let off = 0; off < data.length; )
		off += fs.writeSync(4, data, off);
}

class Interrupted extends Error {
	constructor() {
		super('execution interrupted');
		this.name = 'KeyboardInterrupt';
	}
}

function describe(e) {
	if (e instanceof Interrupted || (e && e.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED'))
		return { ename: 'KeyboardInterrupt', evalue: 'execution interrupted', traceback: [] };
	if (e instanceof Error || (e && typeof e === 'object' && typeof e.stack === 'string'))
		return { ename: String(e.name || 'Error'), evalue: String(e.message),
			 traceback: String(e.stack).split('\n') };
	return { ename: 'Error', evalue: 'Uncaught ' + util.inspect(e), traceback: [] };
}

function isPlain(v) {
	if (Array.isArray(v))
		return true;
	const proto = Object.getPrototypeOf(v);
	return proto === Object.prototype || proto === null;
}

function sendResult(v) {
	if (v !== null && typeof v === 'object' && isPlain(v)) {
		try {
			const s = JSON.stringify(v);
			if (s !== undefined) {
				send({ type: 'result', json: JSON.parse(s), metadata: {} });
				return;
			}
		} catch (e) {
			// a cycle or a BigInt: shown as text below
		}
	}
	send({ type: 'result', text: util.inspect(v), metadata: {} });
}

const ESBUILD = fs.existsSync('/usr/bin/esbuild') ? '/usr/bin/esbuild' : 'esbuild';

function transpile(code) {
	const r = spawnSync(ESBUILD, ['--loader=ts', '--log-level=error', '--color=false'],
			    { input: code, encoding: 'utf8', maxBuffer: 1 << 30 });
	if (r.error)
		throw new Error('cannot run esbuild to compile TypeScript: ' + r.error.message);
	if (r.status !== 0) {
		const e = new SyntaxError(String(r.stderr).trim());
		e.stack = e.name + ': ' + e.message;
		throw e;
	}
	return r.stdout;
}

function compile(code, filename) {
	// like the REPL: "{ a: 1 }" is an object, not a block
	if (/^\s*\{/.test(code) && /\}\s*;?\s*$/.test(code)) {
		try {
			return new vm.Script('(' + code.trim().replace(/;$/, '') + ')\n', { filename });
		} catch (e) {
			// a block after all
		}
	}
	if (processTopLevelAwait && code.includes('await')) {
		let wrapped = null;
		try {
			wrapped = processTopLevelAwait(code);
		} catch (e) {
			// a syntax error: let V8 report it below
		}
		if (wrapped !== null)
			return { script: new vm.Script(wrapped, { filename }), wrapped: true };
	}
	try {
		return new vm.Script(code, { filename });
	} catch (e) {
		if (!(e instanceof SyntaxError) || !code.includes('await') || processTopLevelAwait)
			throw e;
		return { script: new vm.Script('(async () => {\n' + code + '\n})()', { filename }),
			 wrapped: 'plain' };
	}
}

async function run(code) {
	const compiled = compile(code, '<cell ' + executionCount + '>');
	const script = compiled instanceof vm.Script ? compiled : compiled.script;
	const value = script.runInThisContext({ breakOnSigint: true, displayErrors: false });
	if (compiled instanceof vm.Script)
		return value;
	let interrupt;
	const interrupted = new Promise((resolve, reject) => {
		interrupt = () => reject(new Interrupted());
	});
	interrupted.catch(() => {});
	current.interrupt = interrupt;
	try {
		const settled = await Promise.race([value, interrupted]);
		return compiled.wrapped === true && settled ? settled.value : undefined;
	} finally {
		current.interrupt = null;
	}
}

async function execute(seq, code) {
	executionCount++;
	let error = null;
	if (cancelled === seq) {
		error = describe(new Interrupted());
	} else {
		current = { seq, interrupt: null };
		try {
			const value = await run(typescript ? transpile(code) : code);
			if (value !== undefined)
				sendResult(value);
		} catch (e) {
			error = describe(e);
		}
		current = null;
	}
	lastDone = seq;
	send({ type: 'done', seq, execution_count: executionCount, error });
}

function initialise(msg) {
	typescript = !!msg.typescript;
	try {
		process.chdir(msg.cwd || '/workspace');
	} catch (e) {
		send({ type: 'init_done', errno: e.code || 'EIO',
		       error: 'cwd ' + msg.cwd + ': ' + e.message });
		return;
	}
	if (msg.env && typeof msg.env === 'object') {
		for (const k of Object.keys(process.env))
			delete process.env[k];
		for (const [k, v] of Object.entries(msg.env))
			process.env[k] = String(v);
	}
	send({ type: 'init_done', error: null });
}

function interrupt(seq) {
	if (current && current.seq === seq) {
		if (current.interrupt)
			current.interrupt();
	} else if (typeof seq === 'number' && seq > lastDone) {
		cancelled = seq;
	}
}

process.on('SIGINT', () => {
	if (current && current.interrupt)
		current.interrupt();
});
// what the user's code leaves running must not take the kernel down
process.on('uncaughtException', (e) => {
	process.stderr.write('Uncaught ' + util.inspect(e) + '\n');
});
process.on('unhandledRejection', (e) => {
	process.stderr.write('Uncaught (in promise) ' + util.inspect(e) + '\n');
});

let chain = Promise.resolve();
const requests = readline.createInterface({
	input: new net.Socket({ fd: 3, readable: true, writable: false }),
	crlfDelay: Infinity,
});
requests.on('line', (line) => {
	let msg;
	try {
		msg = JSON.parse(line);
	} catch (e) {
		process.stderr.write('sbx kernel: bad request\n');
		return;
	}
	if (msg.type === 'interrupt')
		interrupt(msg.seq);
	else if (msg.type === 'execute')
		chain = chain.then(() => execute(msg.seq, String(msg.code ?? '')));
	else if (msg.type === 'init')
		chain = chain.then(() => initialise(msg));
});
requests.on('close', () => process.exit(0));
send({ type: 'ready' });
})
