/* The `podwire` CNI executable: starts the bundled CPython on cni_plugin.__main__, in place of
 * PyInstaller's bootloader, which on Linux re-executes itself (to set LD_LIBRARY_PATH), loads its
 * own bootstrap modules (pyimod01..03, struct, zipimport) and installs its importer before our first
 * line runs: ~6 ms of a ~30 ms ADD (bench/cni_startup.py). Everything else stays PyInstaller's: the
 * onedir bundle next to us (_internal/: libpython, the stdlib subset as loose .pyc, lib-dynload/).
 *
 * libpython is found through DT_RPATH $ORIGIN/_internal (also for the extension modules' own
 * dependencies, e.g. the bundled libz), $ORIGIN being where the real file lives: the runtime calls us
 * through a symlink (packaging/install-cni.sh). The interpreter is isolated: no site, no environment
 * variables (PYTHON*), no user site, no cwd on sys.path; the search path is _internal and its
 * lib-dynload only. Built by `make dist` (Makefile). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int fail(PyStatus status, PyConfig *config) {
    PyConfig_Clear(config);
    if (PyStatus_IsExit(status))
        return status.exitcode;
    /* the CNI protocol wants JSON on stdout even here: code 999, what a runtime shows the user */
    printf("{\"cniVersion\": \"1.0.0\", \"code\": 999, \"msg\": \"podwire: cannot start Python\", "
           "\"details\": \"%s\"}\n", status.err_msg ? status.err_msg : "");
    return 1;
}

int main(int argc, char **argv) {
    char exe[PATH_MAX], dir[PATH_MAX + 64];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0) {
        perror("podwire: readlink /proc/self/exe");
        return 1;
    }
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    *slash = '\0';

    PyStatus status;
    PyPreConfig pre;
    PyPreConfig_InitIsolatedConfig(&pre);
    pre.utf8_mode = 1; /* stdio and file names as UTF-8 whatever locale the runtime passes */
    status = Py_PreInitialize(&pre);
    if (PyStatus_Exception(status))
        Py_ExitStatusException(status);

    PyConfig config;
    PyConfig_InitIsolatedConfig(&config);
    config.site_import = 0;
    config.safe_path = 1;
    config.write_bytecode = 0;
    config.install_signal_handlers = 1; /* as python and the PyInstaller bootloader: SIGPIPE ignored */
    config.optimization_level = 1;      /* the bundle's .pyc are compiled with optimize=1 */
    config.module_search_paths_set = 1;
    snprintf(dir, sizeof(dir), "%s/_internal", exe);
    status = PyConfig_SetBytesString(&config, &config.home, dir);
    if (PyStatus_Exception(status))
        return fail(status, &config);
    wchar_t *path = Py_DecodeLocale(dir, NULL);
    status = PyWideStringList_Append(&config.module_search_paths, path);
    PyMem_RawFree(path);
    if (PyStatus_Exception(status))
        return fail(status, &config);
    snprintf(dir, sizeof(dir), "%s/_internal/python%d.%d/lib-dynload", exe, PY_MAJOR_VERSION, PY_MINOR_VERSION);
    path = Py_DecodeLocale(dir, NULL);
    status = PyWideStringList_Append(&config.module_search_paths, path);
    PyMem_RawFree(path);
    if (PyStatus_Exception(status))
        return fail(status, &config);
    exe[strlen(exe)] = '/'; /* the full path again: sys.executable */
    status = PyConfig_SetBytesString(&config, &config.executable, exe);
    if (PyStatus_Exception(status))
        return fail(status, &config);
    status = PyConfig_SetBytesArgv(&config, argc, argv);
    if (PyStatus_Exception(status))
        return fail(status, &config);
    status = Py_InitializeFromConfig(&config);
    if (PyStatus_Exception(status))
        return fail(status, &config);
    PyConfig_Clear(&config);

    /* cni_plugin/__main__.py as the bootloader ran it: as the module __main__ */
    PyObject *mod = PyImport_ImportModule("cni_plugin.__main__");
    if (mod == NULL) {
        PyErr_Print();
        printf("{\"cniVersion\": \"1.0.0\", \"code\": 999, \"msg\": \"podwire: cannot load the plugin\"}\n");
        return 1;
    }
    Py_DECREF(mod);
    return Py_FinalizeEx() < 0 ? 120 : 0; /* not reached: main() ends with os._exit */
}
