/* The node table (fs/nodes.c) and directory listings (fs/dircache.c): lookup counts and
 * forget, rename over a target, detach, path building, many entries and hash collisions. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fs/nodes.h"
#include "unit.h"

static struct node *add_looked_up(struct nodes *t, struct node *parent, const char *name)
{
	struct node *n = nodes_add(t, parent, name, NODE_WORKSPACE);
	nodes_lookup(n);
	return n;
}

static bool path_is(const struct node *n, const char *want)
{
	char *p = nodes_path(n);
	bool ok = p && strcmp(p, want) == 0;
	if (!ok)
		printf("# path %s, want %s\n", p ? p : "(null)", want);
	free(p);
	return ok;
}

static void test_lookup_forget(void)
{
	struct nodes t;
	nodes_init(&t, 4);
	struct node *ws = add_looked_up(&t, t.root, "workspace");
	CHECK(ws->id > NODE_ROOT_ID);
	CHECK(nodes_get(&t, ws->id) == ws);
	CHECK(nodes_child(&t, t.root, "workspace") == ws);
	CHECK(nodes_add(&t, t.root, "workspace", NODE_WORKSPACE) == ws);
	nodes_lookup(ws);
	CHECK(ws->nlookup == 2);

	struct node *f = add_looked_up(&t, ws, "f");
	uint64_t fid = f->id, wsid = ws->id;
	/* A child keeps its parent alive after the kernel forgot the parent. */
	nodes_forget(&t, ws, 2);
	CHECK(nodes_get(&t, wsid) == ws);
	CHECK(path_is(f, "/workspace/f"));
	nodes_forget(&t, f, 1);
	CHECK(nodes_get(&t, fid) == NULL);
	CHECK(nodes_get(&t, wsid) == NULL);
	CHECK(t.count == 1);

	/* A held node survives its forget until put. */
	ws = add_looked_up(&t, t.root, "workspace");
	nodes_hold(ws);
	nodes_forget(&t, ws, 1);
	CHECK(nodes_get(&t, ws->id) == ws);
	wsid = ws->id;
	nodes_put(&t, ws);
	CHECK(nodes_get(&t, wsid) == NULL);

	/* Forgetting more than was looked up clamps; the root is never freed. */
	ws = add_looked_up(&t, t.root, "workspace");
	nodes_forget(&t, ws, 99);
	nodes_forget(&t, t.root, 99);
	CHECK(nodes_get(&t, NODE_ROOT_ID) == t.root);
	CHECK(path_is(t.root, ""));
	/* Ids are never reused. */
	struct node *again = add_looked_up(&t, t.root, "workspace");
	CHECK(again->id > wsid);
	nodes_destroy(&t);
}

static void test_rename_detach(void)
{
	struct nodes t;
	nodes_init(&t, 4);
	struct node *ws = add_looked_up(&t, t.root, "workspace");
	struct node *d1 = add_looked_up(&t, ws, "d1");
	struct node *d2 = add_looked_up(&t, ws, "d2");
	struct node *a = add_looked_up(&t, d1, "a");
	struct node *b = add_looked_up(&t, d2, "b");
	struct node *deep = add_looked_up(&t, a, "deep");

	/* Rename over: b is detached, a takes its name, descendants follow. */
	nodes_move(&t, a, d2, "b");
	CHECK(nodes_child(&t, d2, "b") == a);
	CHECK(nodes_child(&t, d1, "a") == NULL);
	CHECK(b->detached && b->parent == NULL);
	CHECK(nodes_path(b) == NULL);
	CHECK(path_is(a, "/workspace/d2/b"));
	CHECK(path_is(deep, "/workspace/d2/b/deep"));
	CHECK(nodes_resolve(&t, "/workspace/d2/b/deep") == deep);
	CHECK(nodes_resolve(&t, "/workspace/d1/a") == NULL);
	CHECK(nodes_below(deep, d2) && !nodes_below(deep, d1));
	/* The detached node lives until the kernel forgets it. */
	uint64_t bid = b->id;
	CHECK(nodes_get(&t, bid) == b);
	nodes_forget(&t, b, 1);
	CHECK(nodes_get(&t, bid) == NULL);

	/* A new node may take a detached name at once. */
	struct node *c = add_looked_up(&t, d1, "c");
	nodes_detach(&t, c);
	struct node *c2 = add_looked_up(&t, d1, "c");
	CHECK(c2 != c && nodes_child(&t, d1, "c") == c2);
	nodes_forget(&t, c, 1);

	/* Below a detached directory there are no paths. */
	nodes_detach(&t, d2);
	CHECK(nodes_path(deep) == NULL);
	CHECK(nodes_resolve(&t, "/workspace/d2") == NULL);

	/* Exchange swaps names. */
	struct node *x = add_looked_up(&t, d1, "x");
	struct node *y = add_looked_up(&t, ws, "y");
	nodes_exchange(&t, x, y);
	CHECK(path_is(x, "/workspace/y"));
	CHECK(path_is(y, "/workspace/d1/x"));
	CHECK(nodes_child(&t, ws, "y") == x && nodes_child(&t, d1, "x") == y);

	/* Generation stamps only grow. */
	uint64_t g = x->gen;
	nodes_touch(&t, x);
	CHECK(x->gen > g && x->gen == t.seq);
	nodes_destroy(&t);
}

static void test_deep_and_many(void)
{
	struct nodes t;
	nodes_init(&t, 4);
	struct node *n = add_looked_up(&t, t.root, "workspace");
	char want[8192] = "/workspace";
	for (int i = 0; i < 500; i++) {
		char name[16];
		snprintf(name, sizeof name, "d%d", i);
		n = add_looked_up(&t, n, name);
		strcat(want, "/");
		strcat(want, name);
	}
	CHECK(path_is(n, want));
	CHECK(nodes_resolve(&t, want) == n);

	/* Many names in one directory and the same name under many parents: the hashes grow
	 * and collide, lookups stay exact. */
	struct node *ws = nodes_child(&t, t.root, "workspace");
	enum { N = 20000 };
	static struct node *kids[N];
	bool ok = true;
	for (int i = 0; i < N; i++) {
		char name[16];
		snprintf(name, sizeof name, "f%d", i);
		kids[i] = add_looked_up(&t, ws, name);
	}
	for (int i = 0; i < N && ok; i++) {
		char name[16];
		snprintf(name, sizeof name, "f%d", i);
		ok = nodes_child(&t, ws, name) == kids[i] && nodes_get(&t, kids[i]->id) == kids[i];
	}
	CHECK(ok);
	struct node *same[64];
	for (int i = 0; i < 64; i++)
		same[i] = add_looked_up(&t, kids[i], "same");
	ok = true;
	for (int i = 0; i < 64; i++)
		ok = ok && nodes_child(&t, kids[i], "same") == same[i] && same[i]->parent == kids[i];
	CHECK(ok);
	for (int i = 0; i < 64; i++)
		nodes_forget(&t, same[i], 1);
	for (int i = 0; i < N; i++)
		nodes_forget(&t, kids[i], 1);
	CHECK(nodes_child(&t, ws, "f7") == NULL);
	CHECK(t.count == 2 + 500);
	nodes_destroy(&t);
}

static void test_listings(void)
{
	struct nodes t;
	nodes_init(&t, 2);
	struct node *ws = add_looked_up(&t, t.root, "workspace");
	struct node *d[3];
	for (int i = 0; i < 3; i++) {
		char name[8];
		snprintf(name, sizeof name, "d%d", i);
		d[i] = add_looked_up(&t, ws, name);
	}
	struct stat st = { .st_ino = 42, .st_mode = S_IFREG | 0644, .st_size = 7 };
	struct dirlist *dl = dirlist_new();
	for (int i = 0; i < 1000; i++) {
		char name[16];
		snprintf(name, sizeof name, "e%d", i);
		dirlist_put(dl, name, &st, NULL);
	}
	dirlist_put(dl, "l", &st, "target");
	CHECK(dl->n == 1001);
	CHECK(dirlist_find(dl, "e999") && dirlist_find(dl, "e999")->st.st_ino == 42);
	CHECK(dirlist_find(dl, "nope") == NULL);
	CHECK_STR(dirlist_find(dl, "l")->target, "target");
	dirlist_stale(dl, "e1");
	CHECK(!dirlist_find(dl, "e1")->st_valid && dirlist_find(dl, "e2")->st_valid);
	dirlist_put(dl, "e1", NULL, NULL);
	CHECK(dirlist_find(dl, "e1") && !dirlist_find(dl, "e1")->st_valid);
	dirlist_remove(dl, "e5");
	CHECK(dirlist_find(dl, "e5") == NULL && dl->n == 1000);

	/* At most max_lists listings: the least recently stored goes first. */
	nodes_set_list(&t, d[0], dl, 1e9);
	nodes_set_list(&t, d[1], dirlist_new(), 1e9);
	nodes_set_list(&t, d[2], dirlist_new(), 1e9);
	CHECK(t.npinned == 2 && d[0]->list == NULL && !d[0]->pinned && d[1]->list && d[2]->list);
	nodes_drop_list(&t, d[1]);
	CHECK(t.npinned == 2 && d[1]->list == NULL && d[1]->pinned);
	/* A directory the kernel forgot keeps its listing, found by its path. */
	uint64_t id = d[2]->id;
	char *path = nodes_path(d[2]);
	nodes_forget(&t, d[2], 1);
	CHECK(nodes_get(&t, id) == d[2] && d[2]->list && nodes_resolve(&t, path) == d[2]);
	/* Unpinned (evicted), it goes. */
	struct node *e = nodes_add(&t, t.root, "e", NODE_WORKSPACE);
	nodes_hold(e);
	nodes_set_list(&t, e, dirlist_new(), 1e9);
	nodes_set_list(&t, d[1], dirlist_new(), 1e9);
	CHECK(nodes_get(&t, id) == NULL && nodes_resolve(&t, path) == NULL);
	free(path);
	nodes_put(&t, e);
	nodes_destroy(&t);
}

static void test_open_files(void)
{
	struct nodes t;
	nodes_init(&t, 2);
	struct node *ws = add_looked_up(&t, t.root, "workspace");
	struct node *f = add_looked_up(&t, ws, "f");
	struct ofile *o1 = nodes_open(&t, f, (struct sbx_file *)0x1, 0);
	struct ofile *o2 = nodes_open(&t, f, (struct sbx_file *)0x2, 1);
	size_t n;
	struct ofile **v = nodes_ofiles(&t, f, &n);
	CHECK(n == 2 && t.all_open);
	/* Forgotten and detached while open: the node stays for its files. */
	uint64_t id = f->id;
	nodes_detach(&t, f);
	nodes_forget(&t, f, 1);
	CHECK(nodes_get(&t, id) == f);
	CHECK(!nodes_close(&t, o1)); /* still held by v */
	CHECK(nodes_close(&t, o2) == false);
	CHECK(nodes_get(&t, id) == NULL);
	bool last1 = false, last2 = false;
	for (size_t i = 0; i < n; i++) {
		bool last = nodes_ofile_put(&t, v[i]);
		if (v[i] == o1)
			last1 = last;
		else
			last2 = last;
	}
	CHECK(last1 && last2);
	CHECK(t.all_open == NULL);
	free(v);
	free(o1);
	free(o2);
	nodes_destroy(&t);
}

int main(void)
{
	test_lookup_forget();
	test_rename_detach();
	test_deep_and_many();
	test_listings();
	test_open_files();
	return UNIT_DONE();
}
