-- Drives a headless Neovim against dgemma-ls for tests/test_nvim.py, as a user would, through
-- the provided config (editors/nvim/dgemma.lua): its keys are typed with nvim_input, several
-- at once where a fast typist or a macro would send them together.
-- Input: $DGEMMA_NVIM_JOB (JSON). Output: JSON written to job.result; every step is bounded.

local job = vim.json.decode((assert(os.getenv('DGEMMA_NVIM_JOB'), 'DGEMMA_NVIM_JOB is not set')))
local report = { log = {}, statuses = {}, trigger_kinds = {}, replies = {} }
local ghost_ns = vim.api.nvim_create_namespace('nvim.lsp.inline_completion')

local function finish(failure)
  report.failure = failure
  local file = assert(io.open(job.result, 'w'))
  file:write(vim.json.encode(report))
  file:close()
  vim.cmd(failure and 'cquit!' or 'qall!')
end

local function step(name, fn)
  return function(...)
    local ok, err = pcall(fn, ...)
    if not ok then
      finish(name .. ': ' .. tostring(err))
    end
  end
end

-- Call `next` once `condition()` is truthy, polling without blocking the event loop.
local function when(what, condition, next, timeout_ms)
  local progress = io.open(job.dir .. '/progress.txt', 'a')
  if progress then
    progress:write(what, '\n')
    progress:close()
  end
  local deadline = vim.uv.now() + (timeout_ms or 60000)
  local function poll()
    local ok, value = pcall(condition)
    if ok and value then
      step(what, next)(value)
    elseif vim.uv.now() > deadline then
      finish('timed out waiting for ' .. what)
    else
      vim.defer_fn(poll, 50)
    end
  end
  poll()
end

-- Run the steps one after another: each gets the function that starts the next.
local function chain(steps)
  local function run(i)
    if i > #steps then
      return finish(nil)
    end
    step(steps[i][1], steps[i][2])(function()
      run(i + 1)
    end)
  end
  run(1)
end

local function text(buf)
  return table.concat(vim.api.nvim_buf_get_lines(buf, 0, -1, true), '\n') .. '\n'
end

local function open(path, body, filetype)
  vim.cmd.edit(vim.fn.fnameescape(path))
  local buf = vim.api.nvim_get_current_buf()
  vim.api.nvim_buf_set_lines(buf, 0, -1, true, vim.split(body:gsub('\n$', ''), '\n', { plain = true }))
  vim.bo[buf].filetype = filetype
  vim.bo[buf].expandtab = false -- a <Tab> is one tab character, whatever the ftplugin set
  vim.bo[buf].softtabstop = 0
  return buf
end

local function ghost(buf)
  local marks = vim.api.nvim_buf_get_extmarks(buf, ghost_ns, 0, -1, { details = true })
  local mark = marks[1]
  if not mark or not mark[4].virt_text then
    return nil
  end
  return table.concat(vim.tbl_map(function(chunk) return chunk[1] end, mark[4].virt_text))
end

local function in_normal_mode()
  return vim.api.nvim_get_mode().mode == 'n'
end

local ready = false
local dgemma = dofile(job.plugin)
dgemma.setup({ cmd = job.cmd, settings = job.settings, inline = job.mode ~= 'menu' })
vim.lsp.config('dgemma', {
  cmd_env = job.env,
  root_dir = job.root,
  handlers = {
    ['window/logMessage'] = function(_, result)
      table.insert(report.log, result.message)
      if result.message:find('model ready', 1, true) then
        ready = true
      elseif result.message:find('could not load', 1, true) then
        finish('the server could not load the model: ' .. result.message)
      end
    end,
  },
})
-- runs after dgemma.lua's own LspProgress handler: what its status() says at each report
vim.api.nvim_create_autocmd('LspProgress', {
  callback = function()
    table.insert(report.statuses, dgemma.status())
  end,
})
-- the trigger kind of every inline completion request, as sent
vim.api.nvim_create_autocmd('LspAttach', {
  callback = function(event)
    local client = vim.lsp.get_client_by_id(event.data.client_id)
    if client and client.name == 'dgemma' and not client.dgemma_recorded then
      client.dgemma_recorded = true
      local request = client.request
      client.request = function(self, method, params, handler, ...)
        if method == 'textDocument/inlineCompletion' or method == 'textDocument/completion' then
          table.insert(report.trigger_kinds, params.context and params.context.triggerKind or vim.NIL)
          local inner = handler
          handler = function(err, result, ctx)
            table.insert(report.replies, err and tostring(err.message) or #((result or {}).items or result or {}))
            return inner(err, result, ctx)
          end
        end
        return request(self, method, params, handler, ...)
      end
    end
  end,
})

local function attached(buf)
  return #vim.lsp.get_clients({ bufnr = buf, name = 'dgemma' }) > 0
end

local steps = {}

-- Tab, x and Esc arrive together while no ghost text is shown: the Tab must stay before the x
-- (the old mapping fed its Tab behind the x). Then the same keys recorded as a macro and
-- replayed on the next line, where the old mapping's Tab fell after the Esc.
table.insert(steps, { 'keys together', function(next)
  local buf = open(job.dir .. '/keys.py', 'abc\nabc\nabc\n', 'python')
  when('dgemma-ls to attach and load', function() return attached(buf) and ready end, function()
    report.tab_map = vim.fn.maparg('<Tab>', 'i', false, true).buffer
    vim.api.nvim_win_set_cursor(0, { 1, 0 })
    vim.api.nvim_input('A\tx<Esc>')
    when('the burst to be typed', function()
      return in_normal_mode() and vim.api.nvim_buf_get_lines(buf, 0, 1, true)[1] ~= 'abc'
    end, function()
      vim.api.nvim_win_set_cursor(0, { 2, 0 })
      vim.api.nvim_input('qqA\tx<Esc>q')
      when('the macro to be recorded', function()
        return in_normal_mode() and vim.fn.reg_recording() == '' and vim.fn.getreg('q') ~= ''
      end,
        function()
          vim.api.nvim_win_set_cursor(0, { 3, 0 })
          vim.api.nvim_input('@q')
          when('the macro to be replayed', function()
            return in_normal_mode() and vim.api.nvim_buf_get_lines(buf, 2, 3, true)[1] ~= 'abc'
          end, function()
            report.keys_after = text(buf)
            report.macro = vim.fn.getreg('q')
            next()
          end, 10000)
        end, 10000)
    end, 10000)
  end, 120000)
end })

-- The mappings live only where dgemma-ls is attached.
table.insert(steps, { 'other buffer', function(next)
  open(job.dir .. '/notes.txt', 'plain text\n', 'text')
  local map = vim.fn.maparg('<Tab>', 'i', false, true)
  report.other_tab_map = { buffer = map.buffer, desc = map.desc } -- Neovim's own <Tab> is global
  next()
end })

-- Ghost text shown, then <Tab> and x together: the completion, then the x.
table.insert(steps, { 'accept', function(next)
  local buf = open(job.dir .. '/inline.py', job.inline_text, 'python')
  when('dgemma-ls to attach', function() return attached(buf) end, function()
    report.inline_before = text(buf)
    vim.api.nvim_win_set_cursor(0, { job.inline_line, 0 })
    vim.api.nvim_input('A')
    when('an inline completion to be shown', function() return ghost(buf) end, function(shown)
      report.inline_shown = shown
      vim.api.nvim_input('\tx<Esc>')
      when('the completion to be accepted', function()
        return in_normal_mode() and text(buf) ~= report.inline_before
      end, function()
        report.inline_after = text(buf)
        next()
      end, 10000)
    end)
  end)
end })

-- <M-\> asks for several candidates (Invoked); <M-]> moves to the next one; <M-Right> takes
-- one word of the shown candidate.
table.insert(steps, { 'candidates', function(next)
  local buf = open(job.dir .. '/words.py', job.inline_text, 'python')
  when('dgemma-ls to attach', function() return attached(buf) end, function()
    report.words_before = text(buf)
    vim.api.nvim_win_set_cursor(0, { job.inline_line, 0 })
    local sent = #report.trigger_kinds
    vim.api.nvim_input('A<M-\\>')
    when('an invoked request and its ghost text', function()
      return vim.tbl_contains(vim.list_slice(report.trigger_kinds, sent + 1), 1) and ghost(buf)
    end, function()
      vim.api.nvim_input('<M-]>')
      vim.defer_fn(step('cycle', function()
        report.cycled = ghost(buf)
        when('a candidate to be shown', function() return ghost(buf) end, function(shown)
          report.words_shown = shown
          vim.api.nvim_input('<M-Right><Esc>')
          when('one word to be accepted', function()
            return in_normal_mode() and text(buf) ~= report.words_before
          end, function()
            report.words_after = text(buf)
            next()
          end, 10000)
        end, 10000)
      end), 1000)
    end)
  end)
end })

-- "Fill in the middle" on a `pass  # TODO` line, applied through resolve.
table.insert(steps, { 'fill', function(next)
  local buf = open(job.dir .. '/fill.py', job.fill_text, 'python')
  when('dgemma-ls to attach', function() return attached(buf) end, function()
    report.fill_before = text(buf)
    vim.api.nvim_win_set_cursor(0, { job.fill_line, 6 })
    vim.lsp.buf.code_action({
      apply = true,
      filter = function(action) return vim.startswith(action.title, 'Fill in the middle') end,
    })
    when('the fill to be applied', function() return text(buf) ~= report.fill_before end, function()
      report.fill_after = text(buf)
      next()
    end, 60000)
  end)
end })

-- "Repair JSON" in a JSON buffer: the repaired text and nothing else (no blank line added).
table.insert(steps, { 'repair json', function(next)
  local buf = open(job.dir .. '/broken.json', job.json_text, 'json')
  when('dgemma-ls to attach', function() return attached(buf) end, function()
    report.json_before = text(buf)
    vim.lsp.buf.code_action({
      apply = true,
      filter = function(action) return vim.startswith(action.title, 'Repair JSON') end,
    })
    when('the repair to be applied', function() return text(buf) ~= report.json_before end, function()
      report.json_after = text(buf)
      report.json_lines = vim.api.nvim_buf_line_count(buf)
      next()
    end, 60000)
  end)
end })

-- The 0.11 path (`inline = false`): typing a trigger character opens the completion menu.
local menu_steps = {
  { 'menu', function(next)
    local buf = open(job.dir .. '/menu.py', job.menu_text, 'python')
    when('dgemma-ls to attach and load', function() return attached(buf) and ready end, function()
      local client = vim.lsp.get_clients({ bufnr = buf, name = 'dgemma' })[1]
      report.completion_provider = client.server_capabilities.completionProvider or vim.NIL
      vim.api.nvim_win_set_cursor(0, { job.menu_line, 0 })
      vim.api.nvim_input('A' .. job.menu_typed)
      -- headless Neovim draws no popup (pumvisible() is 0): the completion itself is checked
      when('the completion menu to open', function()
        local info = vim.fn.complete_info({ 'mode', 'items' })
        return info.mode ~= '' and #info.items > 0 and info
      end, function(info)
        report.menu_items = vim.tbl_map(function(item) return item.word end, info.items)
        report.menu_line = vim.api.nvim_get_current_line()
        vim.api.nvim_input('<Esc>')
        next()
      end, 30000)
    end, 120000)
  end },
}

vim.defer_fn(function() chain(job.mode == 'menu' and menu_steps or steps) end, 0)
vim.defer_fn(function() finish('the whole run took longer than ' .. job.timeout_ms .. ' ms') end, job.timeout_ms)
