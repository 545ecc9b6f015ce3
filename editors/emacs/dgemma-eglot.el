;;; dgemma-eglot.el --- dgemma-ls through Eglot -*- lexical-binding: t; -*-

;;; Commentary:

;; Registers the dgemma-ls language server with Eglot (Emacs 28 with Eglot from ELPA or
;; Debian's elpa-eglot, Emacs 29+ built in) for Python, JavaScript, TypeScript, JSON and
;; Markdown buffers.
;;
;;   (add-to-list 'load-path "/path/to/dgemma-ls/editors/emacs")
;;   (require 'dgemma-eglot)
;;   (setq dgemma-eglot-settings '(:device "cpu" :maxMiddleTokens 48 :compile :json-false))
;;   M-x eglot in a Python buffer
;;
;; The settings are read when they are sent, so `setq' works before or after `require';
;; after the server started, M-x dgemma-eglot-apply-settings sends them.  Write JSON
;; false as :json-false (nil would be sent as null or {}).
;;
;; Eglot runs one server per buffer, so dgemma-ls takes the place of, say, pyright
;; there.  Suggestions arrive through completion-at-point (the server's
;; textDocument/completion fallback; Eglot has no inline completions), and
;; `dgemma-eglot-mode' binds C-c . to `eglot-code-actions' in the buffers dgemma-ls
;; manages: "Fill in the middle", "Repair JSON" and "Repair Markdown table".

;;; Code:

(require 'eglot)

(defgroup dgemma-eglot nil
  "The dgemma-ls language server through Eglot."
  :group 'eglot)

(defcustom dgemma-eglot-server-command '("dgemma-ls")
  "Command line that starts dgemma-ls on stdio."
  :type '(repeat string))

(defcustom dgemma-eglot-settings '(:device "cpu" :maxMiddleTokens 48)
  "The `dgemma' settings section as a plist of camelCase keys:
:model, :device, :dtype, :compile, :steps, :entropyBound, :maxMiddleTokens,
:enabledLanguages.  Read each time it is sent: at start-up, when the server asks
for it and by `dgemma-eglot-apply-settings'."
  :type 'plist)

(defconst dgemma-eglot-modes
  '(python-mode python-ts-mode
    js-mode js-ts-mode js-jsx-mode
    typescript-mode typescript-ts-mode tsx-ts-mode
    js-json-mode json-mode json-ts-mode jsonc-mode
    markdown-mode gfm-mode markdown-ts-mode)
  "Major modes dgemma-ls serves.")

(defclass dgemma-eglot-server (eglot-lsp-server) ()
  :documentation "A connection to dgemma-ls.")

(cl-defmethod eglot-initialization-options ((_server dgemma-eglot-server))
  "The settings as they are when the server starts."
  (list :dgemma dgemma-eglot-settings))

;; Eglot pushes `eglot-workspace-configuration' on connecting; without a `dgemma'
;; section in it the server asks for the section, and gets the settings as they are now.
(cl-defmethod eglot-handle-request
  ((_server dgemma-eglot-server) (_method (eql workspace/configuration)) &key items)
  "Answer the `dgemma' section from `dgemma-eglot-settings'."
  (apply #'vector
         (mapcar (lambda (item)
                   (and (equal (plist-get item :section) "dgemma") dgemma-eglot-settings))
                 items)))

(defun dgemma-eglot--contact (_interactive)
  "The server class and command."
  (cons 'dgemma-eglot-server dgemma-eglot-server-command))

(add-to-list 'eglot-server-programs
             (cons dgemma-eglot-modes #'dgemma-eglot--contact))

(defun dgemma-eglot-apply-settings ()
  "Send `dgemma-eglot-settings' to the server of the current buffer."
  (interactive)
  (let ((server (eglot-current-server)))
    (unless (cl-typep server 'dgemma-eglot-server)
      (user-error "No dgemma-ls server in this buffer"))
    (jsonrpc-notify server :workspace/didChangeConfiguration
                    (list :settings (list :dgemma dgemma-eglot-settings)))))

(defvar dgemma-eglot-mode-map
  (let ((map (make-sparse-keymap)))
    ;; C-c followed by punctuation is left to minor modes; markdown-mode owns C-c C-a
    (define-key map (kbd "C-c .") #'eglot-code-actions)
    map)
  "Keys of `dgemma-eglot-mode'.")

(define-minor-mode dgemma-eglot-mode
  "Keys for dgemma-ls in the buffers it manages: \{dgemma-eglot-mode-map}"
  :lighter nil)

(defun dgemma-eglot--managed ()
  "Turn `dgemma-eglot-mode' on in buffers dgemma-ls manages, off elsewhere."
  (dgemma-eglot-mode (if (and (eglot-managed-p)
                              (cl-typep (eglot-current-server) 'dgemma-eglot-server))
                         1 -1)))

(add-hook 'eglot-managed-mode-hook #'dgemma-eglot--managed)

(provide 'dgemma-eglot)
;;; dgemma-eglot.el ends here
